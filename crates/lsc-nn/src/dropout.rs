//! Inverted dropout: in training each element is kept with probability `1 − p` and scaled by
//! `1 / (1 − p)` (PLSC's `upscale_in_train`); inference is the identity.

use crate::{Layer, Mode};
use lsc_tensor::{Rng, Tensor};

pub struct Dropout {
    pub p: f32,
    seed: u64,
    rng: Rng,
    mask: Vec<f32>,
    /// When set, training forwards reuse the last mask (for gradient checks).
    pub freeze_mask: bool,
}

impl Dropout {
    pub fn new(p: f32, seed: u64) -> Dropout {
        assert!((0.0..1.0).contains(&p), "dropout probability {p} outside [0, 1)");
        Dropout {
            p,
            seed,
            rng: Rng::new(seed),
            mask: Vec::new(),
            freeze_mask: false,
        }
    }
}

impl Dropout {
    /// Draws the next masks from the stream of (seed, step).
    pub fn set_step(&mut self, step: u64) {
        self.rng = Rng::stream(self.seed, step);
    }
}

impl Layer for Dropout {
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Tensor {
        if mode == Mode::Eval || self.p == 0.0 {
            self.mask.clear();
            return x.clone();
        }
        if !(self.freeze_mask && self.mask.len() == x.numel()) {
            let keep = 1.0 - self.p;
            let scale = 1.0 / keep;
            self.mask.clear();
            self.mask
                .extend((0..x.numel()).map(|_| if self.rng.uniform() < keep { scale } else { 0.0 }));
        }
        let mut y = x.clone();
        for (v, m) in y.data_mut().iter_mut().zip(&self.mask) {
            *v *= m;
        }
        y
    }

    fn backward(&mut self, dy: &Tensor) -> Tensor {
        let mut dx = dy.clone();
        if self.mask.is_empty() {
            return dx;
        }
        assert_eq!(dy.numel(), self.mask.len(), "dropout: output gradient shape");
        for (v, m) in dx.data_mut().iter_mut().zip(&self.mask) {
            *v *= m;
        }
        dx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{CheckOptions, check_layer};

    #[test]
    fn backward_matches_finite_differences_with_a_fixed_mask() {
        let mut rng = Rng::new(8);
        let mut d = Dropout::new(0.4, 1);
        d.freeze_mask = true;
        let x = Tensor::randn(&[4, 10], 1.0, &mut rng);
        check_layer(&mut d, &x, &CheckOptions::default()).unwrap();
        let kept = d.mask.iter().filter(|&&m| m > 0.0).count();
        assert!(kept > 10 && kept < 40, "kept {kept} of 40");
    }

    #[test]
    fn keeps_expectation_and_is_identity_in_eval() {
        let mut d = Dropout::new(0.4, 2);
        let x = Tensor::full(&[10_000], 1.0);
        let y = d.forward(&x, Mode::Train);
        let mean: f32 = y.data().iter().sum::<f32>() / 10_000.0;
        assert!((mean - 1.0).abs() < 0.05, "{mean}");
        assert_eq!(d.forward(&x, Mode::Eval), x);
    }
}
