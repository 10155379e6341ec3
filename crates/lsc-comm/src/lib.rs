//! Collective communication between ranks, behind one narrow trait.
//!
//! [`Communicator`] is what the trainer and the sharded head see: all-reduce (sum, max),
//! all-gather (equal or per-rank sizes), reduce-scatter, broadcast and barrier on f32 buffers,
//! the same on bf16 and f16 buffers, plus the rank and world size. Engines:
//! - [`LocalComm`]: world size 1; every collective is a copy or a no-op.
//! - [`ThreadComm`]: N ranks as threads of one process, sharing memory.
//! - `MpiComm` (feature `mpi`): one rank per process over MPI (non-blocking collectives waited
//!   on with a deadline).
//! - `NcclComm` (feature `cuda`): one rank per GPU over NCCL, loaded at run time; the NCCL id
//!   is exchanged over a TCP [`rendezvous`].
//!
//! The 16-bit collectives of the trait's default methods widen to f32, run the f32 collective
//! and round back to nearest (exact for gathers and broadcasts); NCCL overrides them natively.
//!
//! The key decision: collectives are blocking calls that every rank of the group makes in the
//! same order with matching sizes; a size mismatch, a dead peer or a timeout is a [`CommError`]
//! naming the rank and the collective, never a hang.

mod launch; // defines: launcher_world_size (was this process started by mpirun?)
mod local; // defines: LocalComm
#[cfg(feature = "mpi")]
pub mod mpi; // defines: MpiComm, launched_by_mpirun, mpi_world_size
mod narrow; // defines: the widening 16-bit collectives, the padded variable-size all-gather
#[cfg(feature = "cuda")]
pub mod nccl; // defines: NcclComm, probe_nccl
pub mod rendezvous; // defines: Rendezvous (TCP exchange of a small blob, std::net only)
mod thread; // defines: ThreadComm, run_ranks, run_ranks_with_timeout, default_timeout

pub use half::{bf16, f16};
pub use launch::{Launch, launched_by};
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
    /// All-gather with a size per rank: rank `q` sends `counts[q]` elements (its `send`), and
    /// `recv` (`Σ counts` elements) receives them in rank order. Every rank passes the same
    /// `counts`.
    ///
    /// The default pads every block to the largest count and uses [`Communicator::all_gather`];
    /// engines override it with a native variable-size gather.
    fn all_gather_varied(&self, send: &[f32], counts: &[usize], recv: &mut [f32]) -> Result<(), CommError> {
        narrow::all_gather_varied_padded(self, send, counts, recv)
    }
    /// Combines `send` across ranks and leaves block `rank` of the result in `recv`.
    fn reduce_scatter(&self, send: &[f32], recv: &mut [f32], op: ReduceOp) -> Result<(), CommError>;
    /// Copies `buf` of rank `root` into every rank's `buf`.
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), CommError>;
    /// Returns once every rank has entered it.
    fn barrier(&self) -> Result<(), CommError>;

    /// [`Communicator::all_reduce`] on bf16 values (by default: widened to f32, reduced, then
    /// rounded to nearest once).
    fn all_reduce_bf16(&self, buf: &mut [bf16], op: ReduceOp) -> Result<(), CommError> {
        narrow::all_reduce(self, buf, op)
    }
    /// [`Communicator::all_reduce`] on f16 values.
    fn all_reduce_f16(&self, buf: &mut [f16], op: ReduceOp) -> Result<(), CommError> {
        narrow::all_reduce(self, buf, op)
    }
    /// [`Communicator::all_gather`] on bf16 values (exact).
    fn all_gather_bf16(&self, send: &[bf16], recv: &mut [bf16]) -> Result<(), CommError> {
        narrow::all_gather(self, send, recv)
    }
    /// [`Communicator::all_gather`] on f16 values (exact).
    fn all_gather_f16(&self, send: &[f16], recv: &mut [f16]) -> Result<(), CommError> {
        narrow::all_gather(self, send, recv)
    }
    /// [`Communicator::reduce_scatter`] on bf16 values.
    fn reduce_scatter_bf16(&self, send: &[bf16], recv: &mut [bf16], op: ReduceOp) -> Result<(), CommError> {
        narrow::reduce_scatter(self, send, recv, op)
    }
    /// [`Communicator::reduce_scatter`] on f16 values.
    fn reduce_scatter_f16(&self, send: &[f16], recv: &mut [f16], op: ReduceOp) -> Result<(), CommError> {
        narrow::reduce_scatter(self, send, recv, op)
    }
    /// [`Communicator::broadcast`] on bf16 values (exact).
    fn broadcast_bf16(&self, buf: &mut [bf16], root: usize) -> Result<(), CommError> {
        narrow::broadcast(self, buf, root)
    }
    /// [`Communicator::broadcast`] on f16 values (exact).
    fn broadcast_f16(&self, buf: &mut [f16], root: usize) -> Result<(), CommError> {
        narrow::broadcast(self, buf, root)
    }

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
