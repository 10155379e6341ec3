//! An example of a user-defined backbone: a small CNN built from lsc-nn's layers that plugs
//! into the trainer through the [`Backbone`] trait, with no change to lsc itself.
//!
//! `TinyCnn`: conv3×3 (stride 2) → BN → PReLU → conv3×3 (stride 2) → BN → PReLU → flatten →
//! FC → BN1d (the embedding). Each layer is an lsc-nn [`Layer`]; the backbone runs them in
//! order in `forward` and in reverse in `backward`, and names its parameters so that
//! checkpoints key on them (`conv1.weight`, `bn1.running_mean`, …).
//!
//! To train it, hand the trainer a factory (see `tests/train.rs`):
//!
//! ```no_run
//! # use lsc_example_backbone::TinyCnn;
//! let cfg = lsc_train::Config::defaults();
//! let make = |cfg: &lsc_train::Config| -> Result<Box<dyn lsc_nn::Backbone>, String> {
//!     let [h, w] = cfg.model.input_size;
//!     Ok(Box::new(TinyCnn::new([h, w], 8, 16, cfg.model.emb_dim, cfg.seed)))
//! };
//! lsc_train::train_with(&cfg, false, &make).unwrap();
//! ```

use lsc_nn::{Backbone, BatchNorm, Conv2d, Layer, Linear, Mode, PRelu, Param, PreluMode};
use lsc_tensor::{Rng, Tensor};

/// Two strided convolutions with BN and PReLU, then an FC embedding with BN.
pub struct TinyCnn {
    input: [usize; 2],
    emb_dim: usize,
    conv1: Conv2d,
    bn1: BatchNorm,
    prelu1: PRelu,
    conv2: Conv2d,
    bn2: BatchNorm,
    prelu2: PRelu,
    fc: Linear,
    features: BatchNorm,
    /// The `[N, C, H, W]` shape before flattening, for backward.
    flat_shape: Vec<usize>,
}

impl TinyCnn {
    /// For `[h, w]` RGB input, `c1` and `c2` channels after each conv, an `emb_dim` embedding.
    pub fn new(input: [usize; 2], c1: usize, c2: usize, emb_dim: usize, seed: u64) -> TinyCnn {
        let mut rng = Rng::stream(seed, 0x7469_6e79);
        let side = |h: usize| (h - 1) / 2 + 1; // 3×3, stride 2, pad 1
        let (oh, ow) = (side(side(input[0])), side(side(input[1])));
        let mut conv1 = Conv2d::new("conv1", 3, c1, 3, 2, 1, &mut rng);
        conv1.input_grad = false; // nothing upstream needs dL/d(image)
        TinyCnn {
            input,
            emb_dim,
            conv1,
            bn1: BatchNorm::new("bn1", c1, 2e-5, 0.1),
            prelu1: PRelu::new("prelu1", c1, PreluMode::PerChannel),
            conv2: Conv2d::new("conv2", c1, c2, 3, 2, 1, &mut rng),
            bn2: BatchNorm::new("bn2", c2, 2e-5, 0.1),
            prelu2: PRelu::new("prelu2", c2, PreluMode::PerChannel),
            fc: Linear::new("fc", c2 * oh * ow, emb_dim, &mut rng),
            features: BatchNorm::new("features", emb_dim, 2e-5, 0.1),
            flat_shape: Vec::new(),
        }
    }

    /// The convolutional part, in order.
    fn body(&mut self) -> [&mut dyn Layer; 6] {
        [
            &mut self.conv1,
            &mut self.bn1,
            &mut self.prelu1,
            &mut self.conv2,
            &mut self.bn2,
            &mut self.prelu2,
        ]
    }
}

impl Backbone for TinyCnn {
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Tensor {
        let mut t = x.clone();
        for l in self.body() {
            t = l.forward(&t, mode);
        }
        self.flat_shape = t.shape().to_vec();
        let (n, numel) = (t.dim(0), t.numel());
        let t = t
            .reshape(&[n, numel / n.max(1)])
            .expect("flatten keeps the element count");
        let e = self.fc.forward(&t, mode);
        self.features.forward(&e, mode)
    }

    fn backward(&mut self, d_emb: &Tensor) {
        let d = self.features.backward(d_emb);
        let d = self.fc.backward(&d);
        let mut d = d.reshape(&self.flat_shape).expect("unflatten keeps the element count");
        for l in self.body().into_iter().rev() {
            d = l.backward(&d);
        }
    }

    fn emb_dim(&self) -> usize {
        self.emb_dim
    }

    fn input_shape(&self) -> [usize; 3] {
        [3, self.input[0], self.input[1]]
    }

    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        for l in self.body() {
            l.visit_params(f);
        }
        self.fc.visit_params(f);
        self.features.visit_params(f);
    }

    fn visit_buffers(&mut self, f: &mut dyn FnMut(&str, &mut Tensor)) {
        self.bn1.visit_buffers(f);
        self.bn2.visit_buffers(f);
        self.features.visit_buffers(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lsc_nn::gradcheck::{CheckOptions, check_backbone};

    #[test]
    fn shapes_and_names() {
        let mut net = TinyCnn::new([28, 28], 8, 16, 32, 0);
        let e = net.forward(&Tensor::zeros(&[2, 3, 28, 28]), Mode::Eval);
        assert_eq!(e.shape(), &[2, 32]);
        let mut names = Vec::new();
        net.visit_params(&mut |p| names.push(p.name.clone()));
        assert_eq!(names.len(), 12);
        assert!(names.contains(&"prelu2.weight".to_string()) && names.contains(&"fc.bias".to_string()));
        // 3·8·9 + 2·8 + 8 + 8·16·9 + 2·16 + 16 + 16·7·7·32 + 32 + 2·32
        assert_eq!(net.num_params(), 216 + 16 + 8 + 1152 + 32 + 16 + 25088 + 32 + 64);
    }

    /// A small net, with α = 0.8 so that a finite difference crossing PReLU's kink stays
    /// within tolerance, and the options its check runs with.
    fn checkable() -> (TinyCnn, Tensor, CheckOptions) {
        let mut net = TinyCnn::new([9, 7], 3, 4, 5, 1);
        net.visit_params(&mut |p| {
            if p.name.starts_with("prelu") {
                p.value.data_mut().fill(0.8);
            }
        });
        let x = Tensor::randn(&[4, 3, 9, 7], 1.0, &mut Rng::new(2));
        let opts = CheckOptions {
            eps: 2e-3,
            atol: 5e-3,
            rtol: 2e-2,
            max_checks: 40,
            seed: 3,
        };
        (net, x, opts)
    }

    #[test]
    fn every_parameter_gradient_matches_finite_differences() {
        let (mut net, x, opts) = checkable();
        check_backbone(&mut net, &x, &opts).unwrap();
    }

    #[test]
    fn a_wrong_backward_is_caught() {
        // The check is not vacuous: drop the FC's gradient and it fails.
        struct Broken(TinyCnn);
        impl Backbone for Broken {
            fn forward(&mut self, x: &Tensor, mode: Mode) -> Tensor {
                self.0.forward(x, mode)
            }
            fn backward(&mut self, d: &Tensor) {
                self.0.backward(d);
                self.0.fc.weight.grad.fill_zero();
            }
            fn emb_dim(&self) -> usize {
                self.0.emb_dim()
            }
            fn input_shape(&self) -> [usize; 3] {
                self.0.input_shape()
            }
            fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
                self.0.visit_params(f)
            }
            fn visit_buffers(&mut self, f: &mut dyn FnMut(&str, &mut Tensor)) {
                self.0.visit_buffers(f)
            }
        }
        let (net, x, opts) = checkable();
        let e = check_backbone(&mut Broken(net), &x, &opts).unwrap_err();
        assert!(e.contains("fc.weight"), "{e}");
    }
}
