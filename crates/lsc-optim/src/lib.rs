//! Optimisers and learning-rate schedules.
//!
//! [`Sgd`] is PyTorch's SGD (and Paddle's Momentum with L2 decay): `d = g + wd·w`,
//! `v = μ·v + d`, `w −= lr·v`. Its momentum buffers are keyed by parameter name, so the state
//! of a class shard can later be saved and re-partitioned with its weights.
//! [`LrSchedule`] is a linear warmup followed by piecewise-constant decay.

use lsc_nn::Param;
use serde::{Deserialize, Serialize};

/// Something that yields parameters to a visitor: `|f| model.visit_params(f)`.
pub type VisitParams<'a> = dyn FnMut(&mut dyn FnMut(&mut Param)) + 'a;

/// SGD with momentum and (coupled) weight decay.
#[derive(Clone, Debug)]
pub struct Sgd {
    pub momentum: f32,
    pub weight_decay: f32,
    bufs: Vec<(String, Vec<f32>)>,
}

impl Sgd {
    pub fn new(momentum: f32, weight_decay: f32) -> Sgd {
        Sgd {
            momentum,
            weight_decay,
            bufs: Vec::new(),
        }
    }

    /// Applies one update with learning rate `lr` to every parameter `visit` yields, in a
    /// stable order, then zeroes their gradients.
    pub fn step(&mut self, lr: f32, visit: &mut VisitParams<'_>) {
        let mut k = 0;
        let (mu, wd) = (self.momentum, self.weight_decay);
        let bufs = &mut self.bufs;
        visit(&mut |p: &mut Param| {
            if k == bufs.len() {
                bufs.push((p.name.clone(), vec![0.0; p.value.numel()]));
            }
            let (name, v) = &mut bufs[k];
            assert!(
                name == &p.name && v.len() == p.value.numel(),
                "optimizer state {name} does not match parameter {}",
                p.name
            );
            let decay = if p.decay { wd } else { 0.0 };
            let w = p.value.data_mut();
            for ((wv, g), m) in w.iter_mut().zip(p.grad.data()).zip(v.iter_mut()) {
                let d = g + decay * *wv;
                *m = mu * *m + d;
                *wv -= lr * *m;
            }
            p.grad.fill_zero();
            k += 1;
        });
    }

    /// Every momentum buffer by parameter name, in visit order (for checkpoints).
    pub fn state(&self) -> &[(String, Vec<f32>)] {
        &self.bufs
    }

    /// Restores buffers saved by [`Sgd::state`]; the next step checks them against the
    /// parameters by name and size.
    pub fn load_state(&mut self, bufs: Vec<(String, Vec<f32>)>) {
        self.bufs = bufs;
    }

    /// The momentum buffer of a parameter, by name.
    pub fn momentum_of(&self, name: &str) -> Option<&[f32]> {
        self.bufs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }
}

/// The `[optim]` table of a config: learning rate and schedule in epochs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    /// Linear warmup length in epochs (may be fractional; 0 for none).
    pub warmup_epochs: f32,
    /// Epochs at which the LR is multiplied by `decay_factor`.
    pub decay_epochs: Vec<f32>,
    pub decay_factor: f32,
}

impl OptimConfig {
    /// Checks the values, naming the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(format!("optim.lr: {} must be positive", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(format!("optim.momentum: {} outside [0, 1)", self.momentum));
        }
        if !(self.weight_decay >= 0.0) {
            return Err(format!("optim.weight_decay: {} must be ≥ 0", self.weight_decay));
        }
        if !(self.warmup_epochs >= 0.0) {
            return Err(format!("optim.warmup_epochs: {} must be ≥ 0", self.warmup_epochs));
        }
        if self.decay_epochs.windows(2).any(|w| w[0] > w[1]) || self.decay_epochs.iter().any(|e| !(*e >= 0.0)) {
            return Err(format!(
                "optim.decay_epochs: {:?} must be non-negative and ascending",
                self.decay_epochs
            ));
        }
        if !(self.decay_factor > 0.0) {
            return Err(format!("optim.decay_factor: {} must be positive", self.decay_factor));
        }
        Ok(())
    }

    pub fn schedule(&self, steps_per_epoch: usize) -> LrSchedule {
        let spe = steps_per_epoch as f32;
        LrSchedule {
            base: self.lr,
            warmup_steps: (self.warmup_epochs * spe).round() as usize,
            boundaries: self.decay_epochs.iter().map(|e| (e * spe).round() as usize).collect(),
            factor: self.decay_factor,
        }
    }
}

/// Linear warmup from `base/warmup` to `base` over `warmup_steps`, then `base·factor^k` after
/// the k-th boundary (in global steps).
#[derive(Clone, Debug, PartialEq)]
pub struct LrSchedule {
    pub base: f32,
    pub warmup_steps: usize,
    pub boundaries: Vec<usize>,
    pub factor: f32,
}

impl LrSchedule {
    /// The LR of global step `step` (0-based).
    pub fn lr(&self, step: usize) -> f32 {
        let warm = if step < self.warmup_steps {
            (step + 1) as f32 / self.warmup_steps as f32
        } else {
            1.0
        };
        let k = self.boundaries.iter().filter(|&&b| step >= b).count();
        self.base * warm * self.factor.powi(k as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lsc_tensor::Tensor;

    #[test]
    fn sgd_matches_the_pytorch_update_rule() {
        let mut p = Param::new("w", Tensor::from_vec(&[2], vec![1.0, -2.0]).unwrap());
        let mut opt = Sgd::new(0.9, 0.1);
        let (mut w, mut v) = ([1.0f64, -2.0], [0.0f64; 2]);
        for step in 0..3 {
            let g = [0.5f64 + step as f64, -0.25];
            p.grad.data_mut().copy_from_slice(&[g[0] as f32, g[1] as f32]);
            opt.step(0.05, &mut |f| f(&mut p));
            for i in 0..2 {
                v[i] = 0.9 * v[i] + g[i] + 0.1 * w[i];
                w[i] -= 0.05 * v[i];
                assert!((p.value.data()[i] as f64 - w[i]).abs() < 1e-6);
            }
            assert!(p.grad.data().iter().all(|&g| g == 0.0));
        }
        assert_eq!(opt.momentum_of("w").unwrap().len(), 2);
    }

    #[test]
    fn schedule_warms_up_and_decays() {
        let c = OptimConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            warmup_epochs: 0.5,
            decay_epochs: vec![6.0, 8.5],
            decay_factor: 0.1,
        };
        let s = c.schedule(100);
        assert_eq!(s.warmup_steps, 50);
        assert!((s.lr(0) - 0.002).abs() < 1e-7);
        assert!((s.lr(49) - 0.1).abs() < 1e-7);
        assert!((s.lr(599) - 0.1).abs() < 1e-7);
        assert!((s.lr(600) - 0.01).abs() < 1e-7);
        assert!((s.lr(850) - 0.001).abs() < 1e-8);
        let bad = OptimConfig {
            decay_epochs: vec![5.0, 2.0],
            ..c
        };
        assert!(bad.validate().unwrap_err().starts_with("optim.decay_epochs"));
    }
}
