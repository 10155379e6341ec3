//! The distributed epoch sampler: one global permutation per epoch, padded to a multiple of the
//! world size, split into contiguous per-rank slices (PLSC's scheme).

use lsc_tensor::Rng;

/// The sample indices rank `rank` of `world` visits in `epoch`, in visiting order.
///
/// * The global order is `0..len`, shuffled (when `shuffle`) with `Rng::stream(seed, epoch)`;
///   every rank computes the same permutation.
/// * It is padded by wrapping around to its own head (`perm[0], perm[1], ...`) up to
///   `world * ceil(len / world)` entries, so every rank gets exactly `ceil(len / world)` indices
///   and at most `world - 1` samples are seen twice per epoch.
/// * Rank `r` takes the contiguous slice `[r * L, (r + 1) * L)`, `L = ceil(len / world)`,
///   as PLSC's readers do. (PLSC shuffles once and then reshuffles each rank's slice per epoch;
///   here the global permutation is redrawn every epoch instead.)
///
/// `len == 0` gives an empty list.
///
/// # Panics
/// If `world == 0` or `rank >= world`.
pub fn epoch_indices(len: usize, seed: u64, epoch: u64, rank: usize, world: usize, shuffle: bool) -> Vec<usize> {
    assert!(world > 0, "epoch_indices: world size must be at least 1");
    assert!(rank < world, "epoch_indices: rank {rank} >= world size {world}");
    if len == 0 {
        return Vec::new();
    }
    let mut perm: Vec<usize> = (0..len).collect();
    if shuffle {
        Rng::stream(seed, epoch).shuffle(&mut perm);
    }
    let per = len.div_ceil(world);
    (rank * per..(rank + 1) * per).map(|i| perm[i % len]).collect()
}

/// [`epoch_indices`] with its fixed arguments bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sampler {
    pub len: usize,
    pub seed: u64,
    pub rank: usize,
    pub world: usize,
    pub shuffle: bool,
}

impl Sampler {
    /// A sampler over `len` samples for rank `rank` of `world`.
    ///
    /// # Panics
    /// If `world == 0` or `rank >= world`.
    pub fn new(len: usize, seed: u64, rank: usize, world: usize, shuffle: bool) -> Sampler {
        assert!(world > 0, "Sampler: world size must be at least 1");
        assert!(rank < world, "Sampler: rank {rank} >= world size {world}");
        Sampler {
            len,
            seed,
            rank,
            world,
            shuffle,
        }
    }

    /// This rank's indices for `epoch`.
    pub fn epoch(&self, epoch: u64) -> Vec<usize> {
        epoch_indices(self.len, self.seed, epoch, self.rank, self.world, self.shuffle)
    }

    /// How many indices each rank gets per epoch: `ceil(len / world)`.
    pub fn per_rank(&self) -> usize {
        self.len.div_ceil(self.world)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_cover_every_index_with_wrap_padding() {
        for (len, world) in [(10usize, 1usize), (10, 3), (12, 4), (5, 8), (1, 2), (103, 7)] {
            let per = len.div_ceil(world);
            let all: Vec<usize> = (0..world)
                .flat_map(|r| {
                    let v = epoch_indices(len, 42, 3, r, world, true);
                    assert_eq!(v.len(), per, "len {len} world {world} rank {r}");
                    v
                })
                .collect();
            assert_eq!(all.len(), per * world);
            // The first `len` entries of the concatenation are a permutation ...
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
    fn deterministic_differs_across_epochs_and_unshuffled_is_identity() {
        let a = epoch_indices(100, 7, 0, 1, 2, true);
        assert_eq!(a, epoch_indices(100, 7, 0, 1, 2, true));
        assert_ne!(a, epoch_indices(100, 7, 1, 1, 2, true));
        assert_ne!(a, epoch_indices(100, 8, 0, 1, 2, true));
        assert_eq!(
            epoch_indices(5, 7, 0, 1, 2, false),
            vec![3, 4, 0],
            "contiguous slice of the wrapped identity"
        );
        let s = Sampler::new(100, 7, 1, 2, true);
        assert_eq!(s.epoch(0), a);
        assert_eq!(s.per_rank(), 50);
        assert!(epoch_indices(0, 1, 0, 0, 4, true).is_empty());
    }

    #[test]
    #[should_panic(expected = "rank 2 >= world size 2")]
    fn bad_rank_panics() {
        epoch_indices(10, 0, 0, 2, 2, true);
    }
}
