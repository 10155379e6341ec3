//! The distributed epoch sampler: one global permutation per epoch, cut into global batches,
//! each global batch split over the ranks.

use lsc_tensor::Rng;

/// The sample indices rank `rank` of `world` visits in `epoch`, in visiting order, for a
/// per-rank batch of `batch` (a global batch of `G = world × batch`).
///
/// * The global order is `0..len`, shuffled (when `shuffle`) with `Rng::stream(seed, epoch)`;
///   every rank computes the same permutation.
/// * It is padded by wrapping around to its own head (`perm[0], perm[1], ...`) up to
///   `G × ceil(len / G)` entries, so every sample is visited, every step has a full global
///   batch, every rank gets exactly `batch × ceil(len / G)` indices, and at most `G − 1`
///   samples are seen twice per epoch. (PLSC pads to a multiple of the world size and drops
///   the last partial batch; padding to whole global batches drops nothing.)
/// * Global batch `s` is entries `[s·G, (s+1)·G)`; rank `r` takes its `r`-th block of `batch`.
///   So the global batch of every step, and its order once the ranks' embeddings are
///   all-gathered in rank order, depend on the seed, the epoch and `G` only: training with the
///   same global batch on 1, 2 or 8 ranks sees the same samples at every step (what resuming
///   on a different number of ranks relies on).
///
/// `len == 0` gives an empty list.
///
/// # Panics
/// If `world == 0`, `batch == 0` or `rank >= world`.
pub fn epoch_indices(
    len: usize,
    seed: u64,
    epoch: u64,
    rank: usize,
    world: usize,
    batch: usize,
    shuffle: bool,
) -> Vec<usize> {
    assert!(world > 0, "epoch_indices: world size must be at least 1");
    assert!(batch > 0, "epoch_indices: batch size must be at least 1");
    assert!(rank < world, "epoch_indices: rank {rank} >= world size {world}");
    if len == 0 {
        return Vec::new();
    }
    let mut perm: Vec<usize> = (0..len).collect();
    if shuffle {
        Rng::stream(seed, epoch).shuffle(&mut perm);
    }
    let g = world * batch;
    let steps = len.div_ceil(g);
    (0..steps)
        .flat_map(|s| {
            let first = s * g + rank * batch;
            first..first + batch
        })
        .map(|i| perm[i % len])
        .collect()
}

/// [`epoch_indices`] with its fixed arguments bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sampler {
    pub len: usize,
    pub seed: u64,
    pub rank: usize,
    pub world: usize,
    /// Per-rank batch size.
    pub batch: usize,
    pub shuffle: bool,
}

impl Sampler {
    /// A sampler over `len` samples for rank `rank` of `world`, with per-rank batches of `batch`.
    ///
    /// # Panics
    /// If `world == 0`, `batch == 0` or `rank >= world`.
    pub fn new(len: usize, seed: u64, rank: usize, world: usize, batch: usize, shuffle: bool) -> Sampler {
        assert!(world > 0, "Sampler: world size must be at least 1");
        assert!(batch > 0, "Sampler: batch size must be at least 1");
        assert!(rank < world, "Sampler: rank {rank} >= world size {world}");
        Sampler {
            len,
            seed,
            rank,
            world,
            batch,
            shuffle,
        }
    }

    /// This rank's indices for `epoch`.
    pub fn epoch(&self, epoch: u64) -> Vec<usize> {
        epoch_indices(
            self.len,
            self.seed,
            epoch,
            self.rank,
            self.world,
            self.batch,
            self.shuffle,
        )
    }

    /// Steps (global batches) per epoch: `ceil(len / (world × batch))`.
    pub fn steps(&self) -> usize {
        self.len.div_ceil(self.world * self.batch)
    }

    /// How many indices each rank gets per epoch: `batch × steps()`.
    pub fn per_rank(&self) -> usize {
        self.batch * self.steps()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ranks' blocks of each global batch, concatenated in step then rank order.
    fn global_order(len: usize, world: usize, batch: usize, epoch: u64) -> Vec<usize> {
        let per: Vec<Vec<usize>> = (0..world)
            .map(|r| epoch_indices(len, 42, epoch, r, world, batch, true))
            .collect();
        let steps = per[0].len() / batch;
        let mut out = Vec::new();
        for s in 0..steps {
            for p in &per {
                out.extend_from_slice(&p[s * batch..(s + 1) * batch]);
            }
        }
        out
    }

    #[test]
    fn ranks_cover_every_index_with_wrap_padding() {
        for (len, world, batch) in [
            (10usize, 1usize, 3usize),
            (10, 3, 2),
            (12, 4, 3),
            (5, 8, 1),
            (1, 2, 2),
            (103, 7, 4),
        ] {
            let g = world * batch;
            let steps = len.div_ceil(g);
            for r in 0..world {
                let v = epoch_indices(len, 42, 3, r, world, batch, true);
                assert_eq!(v.len(), steps * batch, "len {len} world {world} rank {r}");
                assert_eq!(Sampler::new(len, 42, r, world, batch, true).per_rank(), v.len());
            }
            let all = global_order(len, world, batch, 3);
            assert_eq!(all.len(), steps * g);
            // The first `len` entries of the global order are a permutation ...
            let mut head = all[..len].to_vec();
            head.sort_unstable();
            assert_eq!(head, (0..len).collect::<Vec<_>>());
            // ... and the padding wraps around to its head.
            for i in len..all.len() {
                assert_eq!(all[i], all[i % len]);
            }
        }
    }

    #[test]
    fn the_global_batch_does_not_depend_on_the_rank_count() {
        // A global batch of 12 as 1×12, 2×6, 3×4 and 4×3.
        let one = global_order(100, 1, 12, 5);
        for (world, batch) in [(2, 6), (3, 4), (4, 3)] {
            assert_eq!(global_order(100, world, batch, 5), one, "{world} ranks");
        }
    }

    #[test]
    fn deterministic_differs_across_epochs_and_unshuffled_is_identity() {
        let a = epoch_indices(100, 7, 0, 1, 2, 10, true);
        assert_eq!(a, epoch_indices(100, 7, 0, 1, 2, 10, true));
        assert_ne!(a, epoch_indices(100, 7, 1, 1, 2, 10, true));
        assert_ne!(a, epoch_indices(100, 8, 0, 1, 2, 10, true));
        assert_eq!(
            epoch_indices(5, 7, 0, 1, 2, 1, false),
            vec![1, 3, 0],
            "the second entry of each global batch of 2 of the wrapped identity"
        );
        let s = Sampler::new(100, 7, 1, 2, 10, true);
        assert_eq!(s.epoch(0), a);
        assert_eq!((s.per_rank(), s.steps()), (50, 5));
        assert!(epoch_indices(0, 1, 0, 0, 4, 2, true).is_empty());
    }

    #[test]
    #[should_panic(expected = "rank 2 >= world size 2")]
    fn bad_rank_panics() {
        epoch_indices(10, 0, 0, 2, 2, 1, true);
    }
}
