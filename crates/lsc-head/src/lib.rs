//! The classification head: a margin softmax whose weight is sharded by class over ranks.
//!
//! Rank r of N owns the contiguous, balanced class block [`shard_range`]`(C, N, r)`. A step:
//! 1. L2-normalise the local embeddings (margin losses) and all-gather them and the labels;
//! 2. cosine (or raw, for softmax) logits against the local shard, margin on the target
//!    logit where the label falls in the shard;
//! 3. all-reduce the row max and the row sum of exponentials (a distributed softmax);
//! 4. the loss is the mean over the global batch; gradients `(p − onehot) / B_global` flow
//!    back through the margin, the cosine and the normalisations; the gathered embedding
//!    gradient is reduce-scattered back to its owner, the shard's weight gradient stays local.
//!
//! The key decisions: the CPU kernel is fused (tiles of classes, online softmax, the SGD update
//! applied to each tile in place), so neither the `[C, D]` weight gradient nor the `[B, C]`
//! logits exist; and a non-finite logit, sum or loss is detected (and agreed on by every
//! rank) before any weight is written, so the step can be skipped whole.

mod head; // defines: MarginSoftmax (fused tiled kernel + plain reference), HeadStep, Update
mod margin; // defines: Margin, LossKind, HeadConfig
pub mod sample; // defines: Partial FC class selection
pub mod store; // defines: Rows (f32 / bf16 weights), stochastic rounding

pub use head::{Gradients, HeadError, HeadStep, MarginSoftmax, Update};
pub use margin::{HeadConfig, LossKind, Margin};
pub use store::{DType, Rows};

/// The classes `[start, end)` that rank `rank` of `world` owns: contiguous blocks whose sizes
/// differ by at most one (the first `C mod N` ranks get one more). A rank owns no class when
/// `C < N` and `rank ≥ C`.
pub fn shard_range(num_classes: usize, world: usize, rank: usize) -> std::ops::Range<usize> {
    assert!(
        world > 0 && rank < world,
        "shard_range: rank {rank} outside world size {world}"
    );
    let base = num_classes / world;
    let extra = num_classes % world;
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    start..start + len
}

#[cfg(test)]
mod tests {
    use super::shard_range;

    #[test]
    fn shards_are_balanced_contiguous_and_cover() {
        for c in [0, 1, 2, 7, 10, 100, 101] {
            for n in 1..=9 {
                let mut next = 0;
                let mut sizes = Vec::new();
                for r in 0..n {
                    let s = shard_range(c, n, r);
                    assert_eq!(s.start, next);
                    next = s.end;
                    sizes.push(s.len());
                }
                assert_eq!(next, c);
                assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            }
        }
    }
}
