//! Row-major f32 matrix products on the `gemm` crate.
//!
//! `gemm::gemm` computes `dst = alpha·dst + beta·lhs·rhs` (alpha and beta are the reverse of
//! BLAS) and takes (column stride, row stride) pairs; this wrapper hides both behind a
//! row-major `C = op(A)·op(B) (+ C)` call with checked slice lengths.

/// Whether an operand is used as stored or transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    N,
    T,
}

/// Threading for one product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Par {
    /// Single-threaded: for products already inside a parallel loop.
    Seq,
    /// Use the rayon pool.
    Rayon,
}

/// `C[m×n] = op(A)[m×k] · op(B)[k×n]`, plus the old `C` when `accumulate`.
///
/// All matrices are row-major and dense: `A` is stored `m×k` (or `k×m` when transposed), `B`
/// is `k×n` (or `n×k`), `C` is `m×n`.
///
/// # Panics
/// When a slice is shorter than its shape needs: callers pass shapes they derived from the
/// same tensors, so a mismatch is a bug, not bad input.
pub fn matmul(
    ta: Trans,
    tb: Trans,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    accumulate: bool,
    par: Par,
) {
    assert!(a.len() >= m * k, "matmul: A has {} < {}x{}", a.len(), m, k);
    assert!(b.len() >= k * n, "matmul: B has {} < {}x{}", b.len(), k, n);
    assert!(c.len() >= m * n, "matmul: C has {} < {}x{}", c.len(), m, n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    // (row stride, column stride) of op(A) and op(B) in row-major storage.
    let (a_rs, a_cs) = match ta {
        Trans::N => (k as isize, 1),
        Trans::T => (1, m as isize),
    };
    let (b_rs, b_cs) = match tb {
        Trans::N => (n as isize, 1),
        Trans::T => (1, k as isize),
    };
    let parallelism = match par {
        Par::Seq => gemm::Parallelism::None,
        Par::Rayon => match rayon::current_num_threads() {
            0 | 1 => gemm::Parallelism::None,
            t => gemm::Parallelism::Rayon(t),
        },
    };
    // SAFETY: the asserts above guarantee that every index the strides reach for an m×k, k×n
    // and m×n operand lies inside `a`, `b` and `c`; `c` is borrowed mutably and does not alias.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::reference::matmul_ref;
    use crate::rng::Rng;

    #[test]
    fn matches_reference_every_transpose_and_shape() {
        let mut rng = Rng::new(11);
        let shapes = [(1, 1, 1), (3, 5, 7), (17, 1, 9), (64, 33, 130), (5, 70, 0), (0, 4, 3)];
        for &(m, n, k) in &shapes {
            for ta in [Trans::N, Trans::T] {
                for tb in [Trans::N, Trans::T] {
                    for accumulate in [false, true] {
                        for par in [Par::Seq, Par::Rayon] {
                            let a: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
                            let b: Vec<f32> = (0..k * n).map(|_| rng.normal()).collect();
                            let c0: Vec<f32> = (0..m * n).map(|_| rng.normal()).collect();
                            let mut c = c0.clone();
                            let mut r = c0.clone();
                            matmul(ta, tb, m, n, k, &a, &b, &mut c, accumulate, par);
                            matmul_ref(ta, tb, m, n, k, &a, &b, &mut r, accumulate);
                            for (i, (x, y)) in c.iter().zip(&r).enumerate() {
                                let tol = 1e-5 * (1.0 + (k as f32).sqrt()) * (1.0 + y.abs());
                                assert!(
                                    (x - y).abs() <= tol,
                                    "{m}x{n}x{k} {ta:?}{tb:?} acc={accumulate} [{i}]: {x} vs {y}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
