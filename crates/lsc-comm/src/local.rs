//! The single-rank engine: collectives are copies.

use crate::{CommError, Communicator, ReduceOp, check_len};

/// World size 1.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalComm;

impl Communicator for LocalComm {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn backend(&self) -> &'static str {
        "local"
    }
    fn all_reduce(&self, _buf: &mut [f32], _op: ReduceOp) -> Result<(), CommError> {
        Ok(())
    }
    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        check_len(0, "all_gather", send.len(), recv.len())?;
        recv.copy_from_slice(send);
        Ok(())
    }
    fn all_gather_varied(&self, send: &[f32], counts: &[usize], recv: &mut [f32]) -> Result<(), CommError> {
        crate::narrow::check_varied(0, 1, send.len(), counts, recv.len())?;
        recv.copy_from_slice(send);
        Ok(())
    }
    fn reduce_scatter(&self, send: &[f32], recv: &mut [f32], _op: ReduceOp) -> Result<(), CommError> {
        check_len(0, "reduce_scatter", recv.len(), send.len())?;
        recv.copy_from_slice(send);
        Ok(())
    }
    fn broadcast(&self, _buf: &mut [f32], root: usize) -> Result<(), CommError> {
        if root != 0 {
            return Err(CommError::Invalid {
                rank: 0,
                op: "broadcast",
                why: format!("root {root} outside world size 1"),
            });
        }
        Ok(())
    }
    fn barrier(&self) -> Result<(), CommError> {
        Ok(())
    }
}
