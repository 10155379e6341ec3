//! Deterministic parallel reductions.
//!
//! A rayon `fold`/`reduce` splits work by what the pool's threads happen to steal, so float
//! sums come out in a different order from run to run and with a different thread count.
//! [`ordered_fold`] instead cuts the items into a fixed number of contiguous chunks (chosen
//! from the item count alone), folds each chunk in order, possibly in parallel, and combines
//! the chunk results in chunk order: the same bits on 1 thread or 64.

use rayon::prelude::*;

/// Chunks per reduction: enough to keep a many-core machine busy; independent of the pool.
pub const CHUNKS: usize = 16;

/// Folds items `0..n` in `min(n, CHUNKS)` contiguous chunks, in parallel, then combines the
/// chunk states left to right. Returns `init()` when `n == 0`.
pub fn ordered_fold<S: Send>(
    n: usize,
    init: impl Fn() -> S + Sync,
    fold: impl Fn(S, usize) -> S + Sync,
    combine: impl Fn(S, S) -> S,
) -> S {
    let k = n.clamp(1, CHUNKS);
    let states: Vec<S> = (0..k)
        .into_par_iter()
        .map(|c| {
            let (lo, hi) = (c * n / k, (c + 1) * n / k);
            (lo..hi).fold(init(), &fold)
        })
        .collect();
    states.into_iter().reduce(combine).unwrap_or_else(init)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bits_on_any_pool() {
        let xs: Vec<f32> = (0..10_007)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 + 1e-7 * i as f32)
            .collect();
        let sum = || ordered_fold(xs.len(), || 0.0f32, |s, i| s + xs[i], |a, b| a + b);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(sum);
        let three = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap()
            .install(sum);
        assert_eq!(one.to_bits(), three.to_bits());
        assert_eq!(ordered_fold(0, || 5, |s, _| s + 1, |a, b| a + b), 5);
        assert_eq!(
            ordered_fold(
                3,
                Vec::new,
                |mut v, i| {
                    v.push(i);
                    v
                },
                |mut a, b| {
                    a.extend(b);
                    a
                }
            ),
            vec![0, 1, 2]
        );
    }
}
