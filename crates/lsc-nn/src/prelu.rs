//! PReLU: `y = x` for `x > 0`, else `α·x`, with one α per channel (insightface) or one per
//! layer (PLSC), initialised to 0.25.

use crate::{Layer, Mode, Param};
use lsc_tensor::Tensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Where PReLU's α varies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreluMode {
    /// One α per channel (insightface's IResNet).
    PerChannel,
    /// One α for the whole layer (PLSC's `mode="all"`).
    Shared,
}

pub struct PRelu {
    pub weight: Param,
    c: usize,
    x: Tensor,
}

impl PRelu {
    pub fn new(name: &str, c: usize, mode: PreluMode) -> PRelu {
        let n = match mode {
            PreluMode::PerChannel => c,
            PreluMode::Shared => 1,
        };
        PRelu {
            weight: Param::new(format!("{name}.weight"), Tensor::full(&[n], 0.25)),
            c,
            x: Tensor::default(),
        }
    }

    fn plane(&self, x: &Tensor) -> usize {
        assert!(
            x.shape().len() >= 2 && x.dim(1) == self.c,
            "{}: expected [N, {}, ...], got {:?}",
            self.weight.name,
            self.c,
            x.shape()
        );
        x.shape()[2..].iter().product::<usize>().max(1)
    }
}

impl Layer for PRelu {
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Tensor {
        let _t = crate::profile::scope("prelu.fwd", 0.0);
        let hw = self.plane(x);
        let a = self.weight.value.data();
        let shared = a.len() == 1;
        let c = self.c;
        let mut y = Tensor::zeros(x.shape());
        y.data_mut()
            .par_chunks_mut(hw)
            .zip(x.data().par_chunks(hw))
            .enumerate()
            .for_each(|(i, (yp, xp))| {
                let al = a[if shared { 0 } else { i % c }];
                for (o, &v) in yp.iter_mut().zip(xp) {
                    *o = if v > 0.0 { v } else { al * v };
                }
            });
        if mode == Mode::Train {
            self.x.clone_from(x);
        }
        y
    }

    fn backward(&mut self, dy: &Tensor) -> Tensor {
        let _t = crate::profile::scope("prelu.bwd", 0.0);
        assert_eq!(
            dy.shape(),
            self.x.shape(),
            "{}: output gradient shape",
            self.weight.name
        );
        let hw = self.plane(dy);
        let a = self.weight.value.data();
        let shared = a.len() == 1;
        let c = self.c;
        let mut dx = Tensor::zeros(dy.shape());
        // Per plane: dx, and the plane's contribution to dα (Σ dy·x over x ≤ 0).
        let da_planes: Vec<f64> = dx
            .data_mut()
            .par_chunks_mut(hw)
            .zip(dy.data().par_chunks(hw))
            .zip(self.x.data().par_chunks(hw))
            .enumerate()
            .map(|(i, ((dxp, dyp), xp))| {
                let al = a[if shared { 0 } else { i % c }];
                let mut da = 0.0f32;
                for ((o, &d), &v) in dxp.iter_mut().zip(dyp).zip(xp) {
                    if v > 0.0 {
                        *o = d;
                    } else {
                        *o = al * d;
                        da += d * v;
                    }
                }
                da as f64
            })
            .collect();
        let g = self.weight.grad.data_mut();
        for (i, d) in da_planes.iter().enumerate() {
            g[if shared { 0 } else { i % c }] += *d as f32;
        }
        dx
    }

    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{CheckOptions, check_layer};
    use lsc_tensor::Rng;

    #[test]
    fn backward_matches_finite_differences_both_modes() {
        let mut rng = Rng::new(6);
        for mode in [PreluMode::PerChannel, PreluMode::Shared] {
            let mut p = PRelu::new("prelu", 3, mode);
            // Keep inputs away from the kink at 0 (|x| ≥ 0.1 > ε).
            let mut x = Tensor::randn(&[2, 3, 2, 2], 1.0, &mut rng);
            for v in x.data_mut() {
                *v = v.signum() * (v.abs() + 0.1);
            }
            check_layer(
                &mut p,
                &x,
                &CheckOptions {
                    eps: 1e-3,
                    ..Default::default()
                },
            )
            .unwrap();
        }
    }
}
