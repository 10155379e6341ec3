//! Partial FC class sampling (insightface's `sample_rate`, first `partial_fc.py` semantics).
//!
//! Each step each rank keeps the positive classes of its shard that appear in the global
//! batch, then fills up to `ceil(sample_rate · shard)` rows with negatives drawn uniformly
//! without replacement from the rest of the shard. Only those rows take part in the forward
//! pass, the backward pass and the update (their momentum and weight decay included); the
//! other rows are untouched that step. insightface's `partial_fc_v2.py` differs: its
//! optimizer applies momentum and weight decay to every row every step.
//! With `sample_rate = 1` every row is selected, in order: exactly the full computation.

use lsc_tensor::Rng;
use std::ops::Range;

/// The selected local rows (sorted, local class indices within the shard).
pub fn select(shard: &Range<usize>, labels: &[u32], sample_rate: f32, rng: &mut Rng) -> Vec<u32> {
    let s = shard.len();
    if sample_rate >= 1.0 {
        return (0..s as u32).collect();
    }
    let want = ((sample_rate as f64 * s as f64).ceil() as usize).min(s);
    let mut chosen = vec![false; s];
    let mut count = 0;
    for &l in labels {
        let l = l as usize;
        if shard.contains(&l) && !chosen[l - shard.start] {
            chosen[l - shard.start] = true;
            count += 1;
        }
    }
    // Negatives: rejection sampling when they are sparse, a partial shuffle otherwise.
    let need = want.saturating_sub(count);
    if need > 0 {
        let free = s - count;
        if need * 4 < free {
            let mut got = 0;
            while got < need {
                let j = rng.below(s as u64) as usize;
                if !chosen[j] {
                    chosen[j] = true;
                    got += 1;
                }
            }
        } else {
            let mut rest: Vec<usize> = (0..s).filter(|&j| !chosen[j]).collect();
            for k in 0..need {
                let j = k + rng.below((rest.len() - k) as u64) as usize;
                rest.swap(k, j);
                chosen[rest[k]] = true;
            }
        }
    }
    (0..s as u32).filter(|&j| chosen[j as usize]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_positives_and_fills_with_distinct_negatives() {
        let shard = 100..300;
        let labels = [5u32, 120, 120, 299, 100, 301];
        for rate in [0.01f32, 0.1, 0.5, 0.99] {
            let sel = select(&shard, &labels, rate, &mut Rng::new(3));
            let want = ((rate as f64 * 200.0).ceil() as usize).max(3);
            assert_eq!(sel.len(), want, "rate {rate}");
            assert!(sel.windows(2).all(|w| w[0] < w[1]));
            for p in [20u32, 199, 0] {
                assert!(sel.contains(&p), "positive {p} missing at rate {rate}");
            }
        }
        assert_eq!(
            select(&shard, &labels, 1.0, &mut Rng::new(0)),
            (0..200).collect::<Vec<u32>>()
        );
        assert!(select(&(0..0), &labels, 0.1, &mut Rng::new(0)).is_empty());
    }
}
