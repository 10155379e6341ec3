//! Collective communication between ranks, behind one narrow trait.
//!
//! [`Communicator`] is what the trainer and the sharded head see: all-reduce, all-gather,
//! reduce-scatter, broadcast and barrier on f32 buffers, plus the rank and world size.
//! Engines:
//! - [`LocalComm`]: world size 1; every collective is a copy or a no-op.
//! - [`ThreadComm`]: N ranks as threads of one process, sharing memory.
//!
//! MPI and NCCL engines implement the same trait behind cargo features.
//!
//! The key decision: collectives are blocking calls that every rank of the group makes in the
//! same order with matching sizes; a size mismatch, a dead peer or a timeout is a [`CommError`]
//! naming the rank and the collective, never a hang.

mod local; // defines: LocalComm
mod thread; // defines: ThreadComm, run_ranks, run_ranks_with_timeout, default_timeout

pub use local::LocalComm;
pub use thread::{
    DEFAULT_TIMEOUT, TIMEOUT_ENV, ThreadComm, balanced_slice, default_timeout, run_ranks, run_ranks_with_timeout,
    timeout_from_env,
};

/// How an all-reduce or reduce-scatter combines values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
}

impl ReduceOp {
    /// Combines `acc` with `v`.
    #[inline]
    pub fn apply(self, acc: f32, v: f32) -> f32 {
        match self {
            ReduceOp::Sum => acc + v,
            ReduceOp::Max => acc.max(v),
        }
    }
}

/// A failed collective. Every variant names the rank that saw it and the collective.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum CommError {
    #[error("rank {rank}: {op}: buffer size mismatch: expected {expected} elements, got {got}")]
    Size {
        rank: usize,
        op: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("rank {rank}: {op}: timed out after {secs:.1} s waiting for the other ranks")]
    Timeout { rank: usize, op: &'static str, secs: f64 },
    #[error("rank {rank}: {op}: the group was aborted ({why})")]
    Aborted { rank: usize, op: &'static str, why: String },
    #[error("rank {rank}: {op}: invalid argument: {why}")]
    Invalid { rank: usize, op: &'static str, why: String },
}

/// Collectives over a group of ranks. Every rank calls the same collectives in the same order.
///
/// Sizes: `all_gather` receives `world_size × send.len()` elements in rank order;
/// `reduce_scatter` sends `world_size × recv.len()` elements and each rank keeps its own block.
pub trait Communicator: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// A short name of the engine, e.g. `"local"` or `"threads"`.
    fn backend(&self) -> &'static str;

    /// Combines `buf` elementwise across ranks; every rank ends with the result.
    fn all_reduce(&self, buf: &mut [f32], op: ReduceOp) -> Result<(), CommError>;
    /// Concatenates each rank's `send` in rank order into `recv`.
    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError>;
    /// Combines `send` across ranks and leaves block `rank` of the result in `recv`.
    fn reduce_scatter(&self, send: &[f32], recv: &mut [f32], op: ReduceOp) -> Result<(), CommError>;
    /// Copies `buf` of rank `root` into every rank's `buf`.
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), CommError>;
    /// Returns once every rank has entered it.
    fn barrier(&self) -> Result<(), CommError>;

    /// All-gather of integers (labels, counts): an exact bit copy through the f32 path.
    fn all_gather_u32(&self, send: &[u32]) -> Result<Vec<u32>, CommError> {
        let s: Vec<f32> = send.iter().map(|&v| f32::from_bits(v)).collect();
        let mut r = vec![0.0f32; s.len() * self.world_size()];
        self.all_gather(&s, &mut r)?;
        Ok(r.into_iter().map(f32::to_bits).collect())
    }

    /// A sum all-reduce of one scalar, accumulated in f32.
    fn all_reduce_scalar(&self, v: f32, op: ReduceOp) -> Result<f32, CommError> {
        let mut b = [v];
        self.all_reduce(&mut b, op)?;
        Ok(b[0])
    }
}

/// Checks a buffer length in a collective, returning the error that names it.
pub(crate) fn check_len(rank: usize, op: &'static str, expected: usize, got: usize) -> Result<(), CommError> {
    if expected == got {
        Ok(())
    } else {
        Err(CommError::Size {
            rank,
            op,
            expected,
            got,
        })
    }
}
