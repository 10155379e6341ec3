//! Fully connected layer `y = x·Wᵀ + b` on `[N, in]`; `W` is `[out, in]` (PyTorch layout).

use crate::{Layer, Mode, Param};
use lsc_tensor::cpu::{Par, Trans, matmul};
use lsc_tensor::{Rng, Tensor};

pub struct Linear {
    pub weight: Param,
    pub bias: Param,
    din: usize,
    dout: usize,
    x: Tensor,
}

impl Linear {
    /// Weight ~ Normal(0, sqrt(2 / out)) as PLSC's Xavier(fan_in=0); bias 0.
    pub fn new(name: &str, din: usize, dout: usize, rng: &mut Rng) -> Linear {
        let std = (2.0 / dout as f32).sqrt();
        Linear {
            weight: Param::new(format!("{name}.weight"), Tensor::randn(&[dout, din], std, rng)),
            bias: Param::new(format!("{name}.bias"), Tensor::zeros(&[dout])),
            din,
            dout,
            x: Tensor::default(),
        }
    }

    fn rows(&self, x: &Tensor) -> usize {
        let n = x.shape().first().copied().unwrap_or(0);
        assert_eq!(
            x.numel(),
            n * self.din,
            "{}: expected [N, {}], got {:?}",
            self.weight.name,
            self.din,
            x.shape()
        );
        n
    }
}

impl Linear {
    /// A layer with the given weight `[out, in]` and bias `[out]`.
    pub fn from_weights(name: &str, weight: Tensor, bias: Tensor) -> Linear {
        let s = weight.shape().to_vec();
        assert!(
            s.len() == 2 && bias.shape() == [s[0]],
            "{name}: weight {s:?} and bias {:?} do not make a [out, in] layer",
            bias.shape()
        );
        Linear {
            weight: Param::new(format!("{name}.weight"), weight),
            bias: Param::new(format!("{name}.bias"), bias),
            din: s[1],
            dout: s[0],
            x: Tensor::default(),
        }
    }

    /// The output, caching nothing.
    pub fn infer(&self, x: &Tensor) -> Tensor {
        let n = self.rows(x);
        let _t = crate::profile::scope("fc.fwd", (2 * n * self.din * self.dout) as f64);
        let mut y = Tensor::zeros(&[n, self.dout]);
        for row in y.data_mut().chunks_mut(self.dout) {
            row.copy_from_slice(self.bias.value.data());
        }
        matmul(
            Trans::N,
            Trans::T,
            n,
            self.dout,
            self.din,
            x.data(),
            self.weight.value.data(),
            y.data_mut(),
            true,
            Par::Rayon,
        );
        y
    }
}

impl Layer for Linear {
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Tensor {
        let y = self.infer(x);
        if mode == Mode::Train {
            self.x.clone_from(x);
        }
        y
    }

    fn backward(&mut self, dy: &Tensor) -> Tensor {
        let n = self.rows(&self.x);
        let _t = crate::profile::scope("fc.bwd", (4 * n * self.din * self.dout) as f64);
        assert_eq!(
            dy.shape(),
            &[n, self.dout],
            "{}: output gradient shape",
            self.weight.name
        );
        // dW += dyᵀ·x ; db += Σ dy ; dx = dy·W
        matmul(
            Trans::T,
            Trans::N,
            self.dout,
            self.din,
            n,
            dy.data(),
            self.x.data(),
            self.weight.grad.data_mut(),
            true,
            Par::Rayon,
        );
        for row in dy.data().chunks(self.dout) {
            for (g, d) in self.bias.grad.data_mut().iter_mut().zip(row) {
                *g += d;
            }
        }
        let mut dx = Tensor::zeros(self.x.shape());
        matmul(
            Trans::N,
            Trans::N,
            n,
            self.din,
            self.dout,
            dy.data(),
            self.weight.value.data(),
            dx.data_mut(),
            false,
            Par::Rayon,
        );
        dx
    }

    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
        f(&mut self.bias);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{CheckOptions, check_layer};

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = Rng::new(7);
        let mut l = Linear::new("fc", 6, 4, &mut rng);
        l.bias.value = Tensor::randn(&[4], 1.0, &mut rng);
        let x = Tensor::randn(&[3, 6], 1.0, &mut rng);
        check_layer(&mut l, &x, &CheckOptions::default()).unwrap();
        // A flattened NCHW input works the same.
        let x = Tensor::randn(&[3, 6, 1, 1], 1.0, &mut rng);
        check_layer(&mut l, &x, &CheckOptions::default()).unwrap();
    }
}
