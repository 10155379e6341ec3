//! The trait's default 16-bit collectives (widen to f32, run the f32 collective, round back to
//! nearest) and the padded variable-size all-gather.

use half::{bf16, f16};

use crate::{CommError, Communicator, ReduceOp};

/// A 16-bit float that the default collectives carry as f32 (every value is exact in f32).
pub(crate) trait Float16: Copy {
    fn widen(self) -> f32;
    fn narrow(v: f32) -> Self;
}

impl Float16 for bf16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
    fn narrow(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

impl Float16 for f16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
    fn narrow(v: f32) -> Self {
        f16::from_f32(v)
    }
}

fn widen<T: Float16>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| x.widen()).collect()
}

fn narrow_into<T: Float16>(src: &[f32], dst: &mut [T]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = T::narrow(s);
    }
}

pub(crate) fn all_reduce<C: Communicator + ?Sized, T: Float16>(
    c: &C,
    buf: &mut [T],
    op: ReduceOp,
) -> Result<(), CommError> {
    let mut wide = widen(buf);
    c.all_reduce(&mut wide, op)?;
    narrow_into(&wide, buf);
    Ok(())
}

pub(crate) fn all_gather<C: Communicator + ?Sized, T: Float16>(
    c: &C,
    send: &[T],
    recv: &mut [T],
) -> Result<(), CommError> {
    let mut wide = vec![0.0f32; recv.len()];
    c.all_gather(&widen(send), &mut wide)?;
    narrow_into(&wide, recv);
    Ok(())
}

pub(crate) fn reduce_scatter<C: Communicator + ?Sized, T: Float16>(
    c: &C,
    send: &[T],
    recv: &mut [T],
    op: ReduceOp,
) -> Result<(), CommError> {
    let mut wide = vec![0.0f32; recv.len()];
    c.reduce_scatter(&widen(send), &mut wide, op)?;
    narrow_into(&wide, recv);
    Ok(())
}

pub(crate) fn broadcast<C: Communicator + ?Sized, T: Float16>(
    c: &C,
    buf: &mut [T],
    root: usize,
) -> Result<(), CommError> {
    let mut wide = widen(buf);
    c.broadcast(&mut wide, root)?;
    narrow_into(&wide, buf);
    Ok(())
}

/// Checks the arguments of a variable-size all-gather that a rank can check alone: `counts`
/// has one entry per rank, this rank's entry is `send.len()`, and `recv` holds their sum.
/// Every rank passes the same `counts`, so a wrong `counts` fails on every rank alike (only a
/// wrong `send` or `recv` length is one rank's own fault).
pub(crate) fn check_varied(
    rank: usize,
    world: usize,
    send: usize,
    counts: &[usize],
    recv: usize,
) -> Result<usize, CommError> {
    const OP: &str = "all_gather_varied";
    if counts.len() != world {
        return Err(CommError::Invalid {
            rank,
            op: OP,
            why: format!("{} counts for a world of {world} ranks", counts.len()),
        });
    }
    let total = counts
        .iter()
        .try_fold(0usize, |a, &c| a.checked_add(c))
        .ok_or_else(|| CommError::Invalid {
            rank,
            op: OP,
            why: format!("the counts {counts:?} overflow"),
        })?;
    crate::check_len(rank, OP, counts[rank], send)?;
    crate::check_len(rank, OP, total, recv)?;
    Ok(total)
}

/// The default variable-size all-gather: every block padded to the largest count.
pub(crate) fn all_gather_varied_padded<C: Communicator + ?Sized>(
    c: &C,
    send: &[f32],
    counts: &[usize],
    recv: &mut [f32],
) -> Result<(), CommError> {
    check_varied(c.rank(), c.world_size(), send.len(), counts, recv.len())?;
    let max = counts.iter().copied().max().unwrap_or(0);
    let mut padded = vec![0.0f32; max];
    padded[..send.len()].copy_from_slice(send);
    let mut all = vec![0.0f32; max * counts.len()];
    c.all_gather(&padded, &mut all)?;
    let mut off = 0;
    for (q, &n) in counts.iter().enumerate() {
        recv[off..off + n].copy_from_slice(&all[q * max..q * max + n]);
        off += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varied_checks_name_the_problem() {
        assert_eq!(check_varied(1, 3, 2, &[1, 2, 0], 3), Ok(3));
        assert!(matches!(
            check_varied(0, 3, 1, &[1, 2], 3),
            Err(CommError::Invalid { .. })
        ));
        assert!(matches!(
            check_varied(0, 2, 1, &[usize::MAX, 1], 0),
            Err(CommError::Invalid { .. })
        ));
        assert_eq!(
            check_varied(1, 2, 3, &[1, 2], 3),
            Err(CommError::Size {
                rank: 1,
                op: "all_gather_varied",
                expected: 2,
                got: 3
            })
        );
        assert!(matches!(
            check_varied(0, 2, 1, &[1, 2], 4),
            Err(CommError::Size {
                expected: 3,
                got: 4,
                ..
            })
        ));
    }
}
