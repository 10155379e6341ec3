//! PReLU: `y = x` for `x > 0`, else `α·x`, with one α per channel (insightface) or one per
//! layer (PLSC), initialised to 0.25.

use crate::{Layer, Mode, Param};
use lsc_tensor::Tensor;
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

    fn alpha_index(&self, plane_idx: usize) -> usize {
        if self.weight.value.numel() == 1 {
            0
        } else {
            plane_idx % self.c
        }
    }
}

impl Layer for PRelu {
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Tensor {
        let hw = self.plane(x);
        let a = self.weight.value.data();
        let mut y = x.clone();
        for (i, p) in y.data_mut().chunks_mut(hw).enumerate() {
            let al = a[self.alpha_index(i)];
            for v in p {
                if *v <= 0.0 {
                    *v *= al;
                }
            }
        }
        if mode == Mode::Train {
            self.x.clone_from(x);
        }
        y
    }

    fn backward(&mut self, dy: &Tensor) -> Tensor {
        assert_eq!(
            dy.shape(),
            self.x.shape(),
            "{}: output gradient shape",
            self.weight.name
        );
        let hw = self.plane(dy);
        let mut dx = dy.clone();
        let mut da = vec![0.0f64; self.weight.value.numel()];
        for (i, (d, x)) in dx.data_mut().chunks_mut(hw).zip(self.x.data().chunks(hw)).enumerate() {
            let k = self.alpha_index(i);
            let al = self.weight.value.data()[k];
            for (dv, &xv) in d.iter_mut().zip(x) {
                if xv <= 0.0 {
                    da[k] += *dv as f64 * xv as f64;
                    *dv *= al;
                }
            }
        }
        for (g, d) in self.weight.grad.data_mut().iter_mut().zip(&da) {
            *g += *d as f32;
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
