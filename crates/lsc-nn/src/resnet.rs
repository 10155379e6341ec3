//! The face ResNet in the IR style (insightface's IResNet, PLSC's ResNet50/101/152).
//!
//! - Stem: conv3×3 (stride 1) → BN → PReLU, no max-pool.
//! - IR unit: BN → conv3×3 → BN → PReLU → conv3×3 (stride s) → BN, plus a shortcut that is
//!   conv1×1 (stride s) → BN when the shape changes, else the identity; no activation after
//!   the sum. The first unit of each stage has the stage's stride (2 in every preset).
//! - Head: BN → dropout → flatten → FC → BN (the embedding, not L2-normalised).
//!
//! One code path builds every depth (see [`ResNetConfig::preset`] and [`crate::arch`]).
//!
//! Parameter and buffer names are insightface's `iresnet.py` names, one to one, so a
//! state dict maps onto this model by name (PyTorch's `num_batches_tracked` has no
//! counterpart and is ignored):
//!
//! | tensor | names |
//! | --- | --- |
//! | stem | `conv1.weight`, `bn1.{weight,bias,running_mean,running_var}`, `prelu.weight` |
//! | unit j of stage s (1-based) | `layer{s}.{j}.bn1.*`, `layer{s}.{j}.conv1.weight`, `layer{s}.{j}.bn2.*`, `layer{s}.{j}.prelu.weight`, `layer{s}.{j}.conv2.weight`, `layer{s}.{j}.bn3.*` |
//! | projection shortcut | `layer{s}.{j}.downsample.0.weight` (conv1×1), `layer{s}.{j}.downsample.1.*` (BN) |
//! | head | `bn2.*` (BN2d), `fc.weight` `[emb, C·H·W]`, `fc.bias`, `features.*` (BN1d) |
//!
//! Shapes follow PyTorch: conv `[cout, cin, k, k]`, FC `[out, in]`, PReLU `[C]` per channel
//! or `[1]` shared.

pub use crate::arch::{ConfigError, ResNetConfig};
use crate::bn::Epilogue;
use crate::{Backbone, BatchNorm, Conv2d, Dropout, Layer, Linear, Mode, PRelu, Param};
use lsc_ckpt::{Data, NamedTensor};
use lsc_tensor::{Rng, Tensor};
use std::collections::BTreeMap;

/// Transient buffers shared by the units of a net (they run one at a time), reused from step
/// to step: conv outputs, the shortcut branch and the gradients between layers.
#[derive(Default)]
pub(crate) struct Scratch {
    c1: Tensor,
    c2: Tensor,
    s: Tensor,
    sb: Tensor,
    g1: Tensor,
    g2: Tensor,
    gs: Tensor,
    /// Eval-mode stand-ins for the units' training caches, so an eval forward leaves them be.
    a1: Tensor,
    p: Tensor,
}

/// One IR unit.
///
/// Forward runs BN2 and PReLU as one pass and BN3 with the residual sum as another; the
/// training forward keeps only what backward reads: each BN's x̂, the two convolutions'
/// inputs and, with a projection shortcut, the unit's input.
pub struct IrUnit {
    pub(crate) bn1: BatchNorm,
    pub(crate) conv1: Conv2d,
    pub(crate) bn2: BatchNorm,
    pub(crate) prelu: PRelu,
    pub(crate) conv2: Conv2d,
    pub(crate) bn3: BatchNorm,
    pub(crate) down: Option<(Conv2d, BatchNorm)>,
    /// conv1's input (bn1's output) and conv2's input (PReLU's output), from the last
    /// training forward.
    a1: Tensor,
    p: Tensor,
    /// The unit's input, kept only with a projection shortcut (its conv's weight gradient).
    x: Tensor,
}

impl IrUnit {
    pub fn new(name: &str, cin: usize, cout: usize, stride: usize, cfg: &ResNetConfig, rng: &mut Rng) -> IrUnit {
        let bn = |n: &str, c| BatchNorm::new(&format!("{name}.{n}"), c, cfg.bn_eps, cfg.bn_momentum);
        let down = (stride != 1 || cin != cout).then(|| {
            (
                Conv2d::new(&format!("{name}.downsample.0"), cin, cout, 1, stride, 0, rng),
                bn("downsample.1", cout),
            )
        });
        IrUnit {
            bn1: bn("bn1", cin),
            conv1: Conv2d::new(&format!("{name}.conv1"), cin, cout, 3, 1, 1, rng),
            bn2: bn("bn2", cout),
            prelu: PRelu::new(&format!("{name}.prelu"), cout, cfg.prelu),
            conv2: Conv2d::new(&format!("{name}.conv2"), cout, cout, 3, stride, 1, rng),
            bn3: bn("bn3", cout),
            down,
            a1: Tensor::default(),
            p: Tensor::default(),
            x: Tensor::default(),
        }
    }

    fn layers(&mut self) -> [&mut dyn Layer; 6] {
        [
            &mut self.bn1,
            &mut self.conv1,
            &mut self.bn2,
            &mut self.prelu,
            &mut self.conv2,
            &mut self.bn3,
        ]
    }

    /// The unit's output into `y` (resized), with fused BN passes; in train mode it keeps
    /// what [`IrUnit::backward_into`] needs.
    pub(crate) fn forward_into(&mut self, x: &Tensor, mode: Mode, sc: &mut Scratch, y: &mut Tensor) {
        let train = mode == Mode::Train;
        let (a1, p) = if train {
            (&mut self.a1, &mut self.p)
        } else {
            (&mut sc.a1, &mut sc.p)
        };
        self.bn1.forward_fused(x, mode, Epilogue::default(), a1);
        self.conv1.infer_into(a1, &mut sc.c1);
        let act = Epilogue {
            prelu: Some(self.prelu.weight.value.data()),
            res: None,
        };
        self.bn2.forward_fused(&sc.c1, mode, act, p);
        self.conv2.infer_into(p, &mut sc.c2);
        let res = match &mut self.down {
            Some((c, b)) => {
                c.infer_into(x, &mut sc.s);
                b.forward_fused(&sc.s, mode, Epilogue::default(), &mut sc.sb);
                if train {
                    self.x.clone_from(x);
                }
                &sc.sb
            }
            None => x,
        };
        let sum = Epilogue {
            prelu: None,
            res: Some(res),
        };
        self.bn3.forward_fused(&sc.c2, mode, sum, y);
    }

    /// Backward from dL/dy of the last training forward: accumulates every parameter
    /// gradient and writes dL/dx into `dx` (resized).
    pub(crate) fn backward_into(&mut self, dy: &Tensor, sc: &mut Scratch, dx: &mut Tensor) {
        // The shortcut's gradient first, so that bn1's backward adds it in its own pass.
        let short = match &mut self.down {
            Some((c, b)) => {
                b.backward_fused(dy, None, None, &mut sc.g1);
                c.backward_from(&self.x, &sc.g1, Some(&mut sc.gs));
                &sc.gs
            }
            None => dy,
        };
        self.bn3.backward_fused(dy, None, None, &mut sc.g1);
        self.conv2.backward_from(&self.p, &sc.g1, Some(&mut sc.g2));
        self.bn2
            .backward_fused(&sc.g2, Some(&mut self.prelu.weight), None, &mut sc.g1);
        self.conv1.backward_from(&self.a1, &sc.g1, Some(&mut sc.g2));
        self.bn1.backward_fused(&sc.g2, None, Some(short), dx);
    }

    /// The same unit computed layer by layer through each layer's own [`Layer`] forward (no
    /// fused passes): the specification the fused forward is tested against.
    #[cfg(test)]
    pub(crate) fn forward_unfused(&mut self, x: &Tensor, mode: Mode) -> Tensor {
        let mut h = x.clone();
        for l in self.layers() {
            h = l.forward(&h, mode);
        }
        let short = match &mut self.down {
            Some((c, b)) => {
                let s = c.forward(x, mode);
                b.forward(&s, mode)
            }
            None => x.clone(),
        };
        h.add_assign(&short).expect("IR unit: branch shapes agree");
        h
    }
}

impl Layer for IrUnit {
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Tensor {
        let mut y = Tensor::default();
        self.forward_into(x, mode, &mut Scratch::default(), &mut y);
        y
    }

    fn backward(&mut self, dy: &Tensor) -> Tensor {
        let mut dx = Tensor::default();
        self.backward_into(dy, &mut Scratch::default(), &mut dx);
        dx
    }

    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        for l in self.layers() {
            l.visit_params(f);
        }
        if let Some((c, b)) = &mut self.down {
            c.visit_params(f);
            b.visit_params(f);
        }
    }

    fn visit_buffers(&mut self, f: &mut dyn FnMut(&str, &mut Tensor)) {
        for l in self.layers() {
            l.visit_buffers(f);
        }
        if let Some((_, b)) = &mut self.down {
            b.visit_buffers(f);
        }
    }
}

/// The whole backbone: stem, stages of IR units, embedding head.
pub struct IResNet {
    pub(crate) cfg: ResNetConfig,
    pub(crate) conv1: Conv2d,
    pub(crate) bn1: BatchNorm,
    pub(crate) prelu: PRelu,
    pub(crate) units: Vec<IrUnit>,
    pub(crate) bn2: BatchNorm,
    pub(crate) dropout: Dropout,
    pub(crate) fc: Linear,
    pub(crate) features: BatchNorm,
    flat_shape: Vec<usize>,
    /// The input of the last training forward (the stem conv's weight gradient).
    x: Tensor,
    /// Unit outputs and gradients, ping-ponged between units; reused from step to step.
    acts: [Tensor; 2],
    sc: Scratch,
}

impl IResNet {
    pub fn new(cfg: &ResNetConfig, seed: u64) -> Result<IResNet, ConfigError> {
        cfg.validate()?;
        let mut rng = Rng::stream(seed, 0x6e6574);
        let bn = |n: &str, c| BatchNorm::new(n, c, cfg.bn_eps, cfg.bn_momentum);
        let w0 = cfg.widths[0];
        let mut conv1 = Conv2d::new("conv1", 3, w0, 3, 1, 1, &mut rng);
        conv1.input_grad = false;
        let mut units = Vec::new();
        for (s, j, cin, cout, stride) in cfg.unit_plan() {
            units.push(IrUnit::new(
                &format!("layer{}.{j}", s + 1),
                cin,
                cout,
                stride,
                cfg,
                &mut rng,
            ));
        }
        let cin = *cfg.widths.last().expect("validated: at least one stage");
        let [oh, ow] = cfg.output_size();
        Ok(IResNet {
            cfg: cfg.clone(),
            conv1,
            bn1: bn("bn1", w0),
            prelu: PRelu::new("prelu", w0, cfg.prelu),
            units,
            bn2: bn("bn2", cin),
            dropout: Dropout::new(cfg.dropout, rng.next_u64()),
            fc: Linear::new("fc", cin * oh * ow, cfg.emb_dim, &mut rng),
            features: bn("features", cfg.emb_dim),
            flat_shape: Vec::new(),
            x: Tensor::default(),
            acts: [Tensor::default(), Tensor::default()],
            sc: Scratch::default(),
        })
    }

    pub fn config(&self) -> &ResNetConfig {
        &self.cfg
    }

    /// Computes dL/d(input) too (for gradient checks of the whole network).
    pub fn set_input_grad(&mut self, on: bool) {
        self.conv1.input_grad = on;
    }

    /// For gradient checks: reuse the last dropout mask in training forwards.
    pub fn freeze_dropout(&mut self, on: bool) {
        self.dropout.freeze_mask = on;
    }

    /// The embedding head from the last unit's output.
    fn head_forward(&mut self, t: &Tensor, mode: Mode) -> Tensor {
        let t = self.bn2.forward(t, mode);
        let t = self.dropout.forward(&t, mode);
        self.flat_shape = t.shape().to_vec();
        let n = t.dim(0);
        let flat = t.numel() / n.max(1);
        let t = t.reshape(&[n, flat]).expect("flatten keeps the element count");
        let e = self.fc.forward(&t, mode);
        self.features.forward(&e, mode)
    }

    /// The same network computed layer by layer through each layer's own [`Layer`] forward
    /// (no fused passes, no reused buffers): what the fused forward is tested against.
    #[cfg(test)]
    pub(crate) fn forward_unfused(&mut self, x: &Tensor, mode: Mode) -> Tensor {
        let mut t = self.conv1.forward(x, mode);
        t = self.bn1.forward(&t, mode);
        t = self.prelu.forward(&t, mode);
        for u in &mut self.units {
            t = u.forward_unfused(&t, mode);
        }
        self.head_forward(&t, mode)
    }
}

impl Layer for IResNet {
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Tensor {
        let [h, w] = self.cfg.input_size;
        assert!(
            x.shape().len() == 4 && x.shape()[1..] == [3, h, w],
            "IResNet: expected input [N, 3, {h}, {w}], got {:?}",
            x.shape()
        );
        if mode == Mode::Train {
            self.x.clone_from(x);
        }
        let [a, b] = &mut self.acts;
        let (mut cur, mut next) = (a, b);
        self.conv1.infer_into(x, &mut self.sc.c1);
        let act = Epilogue {
            prelu: Some(self.prelu.weight.value.data()),
            res: None,
        };
        self.bn1.forward_fused(&self.sc.c1, mode, act, cur);
        for u in &mut self.units {
            u.forward_into(cur, mode, &mut self.sc, next);
            std::mem::swap(&mut cur, &mut next);
        }
        // After an even number of units the output is in acts[0], else in acts[1].
        let last = self.units.len() % 2;
        let t = std::mem::take(&mut self.acts[last]);
        let e = self.head_forward(&t, mode);
        self.acts[last] = t;
        e
    }

    fn backward(&mut self, d_emb: &Tensor) -> Tensor {
        let d = self.features.backward(d_emb);
        let d = self.fc.backward(&d);
        let d = d.reshape(&self.flat_shape).expect("unflatten keeps the element count");
        let d = self.dropout.backward(&d);
        let [a, b] = &mut self.acts;
        let (mut cur, mut next) = (a, b);
        *cur = self.bn2.backward(&d);
        for u in self.units.iter_mut().rev() {
            u.backward_into(cur, &mut self.sc, next);
            std::mem::swap(&mut cur, &mut next);
        }
        self.bn1
            .backward_fused(cur, Some(&mut self.prelu.weight), None, &mut self.sc.g1);
        let mut dx = Tensor::default();
        let want = self.conv1.input_grad;
        self.conv1.backward_from(&self.x, &self.sc.g1, want.then_some(&mut dx));
        dx
    }

    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.conv1.visit_params(f);
        self.bn1.visit_params(f);
        self.prelu.visit_params(f);
        for u in &mut self.units {
            u.visit_params(f);
        }
        self.bn2.visit_params(f);
        self.fc.visit_params(f);
        self.features.visit_params(f);
    }

    fn visit_buffers(&mut self, f: &mut dyn FnMut(&str, &mut Tensor)) {
        self.bn1.visit_buffers(f);
        for u in &mut self.units {
            u.visit_buffers(f);
        }
        self.bn2.visit_buffers(f);
        self.features.visit_buffers(f);
    }
}

impl Backbone for IResNet {
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Tensor {
        Layer::forward(self, x, mode)
    }
    fn backward(&mut self, d_emb: &Tensor) {
        Layer::backward(self, d_emb);
    }
    fn emb_dim(&self) -> usize {
        self.cfg.emb_dim
    }
    fn set_step(&mut self, step: u64) {
        self.dropout.set_step(step);
    }
    fn input_shape(&self) -> [usize; 3] {
        [3, self.cfg.input_size[0], self.cfg.input_size[1]]
    }
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        Layer::visit_params(self, f)
    }
    fn visit_buffers(&mut self, f: &mut dyn FnMut(&str, &mut Tensor)) {
        Layer::visit_buffers(self, f)
    }
}

/// Copies every parameter and BN statistic of `net` from `tensors` by name (f32, same shape).
/// Returns the names in `tensors` the model has no use for (optimiser state, PyTorch's
/// `num_batches_tracked`, …); a missing tensor or a wrong shape or dtype is an error listing
/// every such name.
pub fn load_named(net: &mut dyn Backbone, tensors: &BTreeMap<String, NamedTensor>) -> Result<Vec<String>, String> {
    let mut used = std::collections::BTreeSet::new();
    let mut bad = Vec::new();
    let mut put = |name: &str, dst: &mut Tensor| match tensors.get(name) {
        Some(NamedTensor {
            shape,
            data: Data::F32(v),
            ..
        }) if shape == dst.shape() => {
            dst.data_mut().copy_from_slice(v);
            used.insert(name.to_string());
        }
        Some(t) if t.shape != dst.shape() => bad.push(format!(
            "{name}: shape {:?} in the file, {:?} in the model",
            t.shape,
            dst.shape()
        )),
        Some(_) => bad.push(format!("{name}: not f32")),
        None => bad.push(format!("{name}: not in the file")),
    };
    net.visit_params(&mut |p| put(&p.name, &mut p.value));
    net.visit_buffers(&mut |name, t| put(name, t));
    if !bad.is_empty() {
        return Err(bad.join("; "));
    }
    Ok(tensors.keys().filter(|k| !used.contains(*k)).cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PreluMode;
    use crate::gradcheck::{CheckOptions, check_layer};

    fn tiny() -> ResNetConfig {
        ResNetConfig {
            units: vec![1, 2],
            widths: vec![3, 4],
            strides: vec![2, 2],
            emb_dim: 5,
            input_size: [6, 6],
            dropout: 0.2,
            prelu: PreluMode::PerChannel,
            bn_eps: 2e-5,
            bn_momentum: 0.1,
        }
    }

    /// Composite checks cross PReLU's kink at 0 for a few coordinates; α = 0.8 shrinks the
    /// kink so a crossing stays inside the tolerance. PReLU alone is checked at α = 0.25.
    fn soften_kinks(l: &mut dyn Layer) {
        l.visit_params(&mut |p| {
            if p.name.ends_with("prelu.weight") {
                p.value.data_mut().fill(0.8);
            }
        });
    }

    #[test]
    fn ir_units_backward_matches_finite_differences() {
        let cfg = tiny();
        let mut rng = Rng::new(9);
        // With a projection shortcut (stride 2, width change) and with the identity.
        for (cin, cout, stride) in [(2, 3, 2), (3, 3, 1)] {
            let mut u = IrUnit::new("u", cin, cout, stride, &cfg, &mut rng);
            soften_kinks(&mut u);
            let x = Tensor::randn(&[3, cin, 5, 5], 1.0, &mut rng);
            check_layer(
                &mut u,
                &x,
                &CheckOptions {
                    eps: 2e-3,
                    atol: 5e-3,
                    rtol: 2e-2,
                    ..Default::default()
                },
            )
            .unwrap();
        }
    }

    #[test]
    fn whole_network_backward_matches_finite_differences() {
        let mut net = IResNet::new(&tiny(), 3).unwrap();
        net.set_input_grad(true);
        net.freeze_dropout(true);
        soften_kinks(&mut net);
        let mut rng = Rng::new(10);
        let x = Tensor::randn(&[4, 3, 6, 6], 1.0, &mut rng);
        let opts = CheckOptions {
            eps: 2e-3,
            atol: 5e-3,
            rtol: 3e-2,
            max_checks: 12,
            seed: 1,
        };
        check_layer(&mut net, &x, &opts).unwrap();
    }

    /// Widths of 16 on 8×8 planes: the 3×3 stride-1 convolutions take the Winograd path.
    fn wide() -> ResNetConfig {
        ResNetConfig {
            units: vec![1, 1],
            widths: vec![16, 16],
            strides: vec![1, 2],
            emb_dim: 6,
            input_size: [8, 8],
            dropout: 0.0,
            prelu: PreluMode::PerChannel,
            bn_eps: 2e-5,
            bn_momentum: 0.1,
        }
    }

    /// Random BN affine parameters and statistics, PReLU slopes of both signs' sizes.
    fn randomize(net: &mut IResNet, seed: u64) {
        let mut rng = Rng::new(seed);
        Layer::visit_params(net, &mut |p| {
            let n = p.value.numel();
            if p.name.ends_with("prelu.weight") {
                p.value = Tensor::uniform(p.value.shape(), 0.1, 0.5, &mut rng);
            } else if n == p.value.dim(0) && !p.name.starts_with("fc.") {
                let lo = if p.name.ends_with(".weight") { 0.5 } else { -0.3 };
                p.value = Tensor::uniform(p.value.shape(), lo, lo + 1.0, &mut rng);
            }
        });
        Layer::visit_buffers(net, &mut |name, t| {
            *t = if name.ends_with("running_var") {
                Tensor::uniform(t.shape(), 0.5, 1.5, &mut rng)
            } else {
                Tensor::randn(t.shape(), 0.2, &mut rng)
            };
        });
    }

    #[test]
    fn fused_forward_matches_the_layer_by_layer_forward() {
        for cfg in [tiny(), wide()] {
            let mut cfg = cfg;
            cfg.dropout = 0.0;
            let mut a = IResNet::new(&cfg, 4).unwrap();
            randomize(&mut a, 5);
            let mut b = IResNet::new(&cfg, 4).unwrap();
            randomize(&mut b, 5);
            let [h, w] = cfg.input_size;
            let x = Tensor::randn(&[3, 3, h, w], 1.0, &mut Rng::new(6));
            for mode in [Mode::Eval, Mode::Train, Mode::Eval] {
                let fused = Layer::forward(&mut a, &x, mode);
                let plain = b.forward_unfused(&x, mode);
                let d = fused
                    .data()
                    .iter()
                    .zip(plain.data())
                    .map(|(p, q)| (p - q).abs())
                    .fold(0.0f32, f32::max);
                let scale = plain.data().iter().map(|v| v.abs()).fold(0.0f32, f32::max);
                assert!(
                    d <= 1e-4 * scale.max(1.0),
                    "{mode:?} {:?}: max difference {d}",
                    cfg.widths
                );
            }
            // The training forwards updated both nets' running statistics alike.
            let (mut ra, mut rb) = (Vec::new(), Vec::new());
            Layer::visit_buffers(&mut a, &mut |_, t| ra.extend_from_slice(t.data()));
            Layer::visit_buffers(&mut b, &mut |_, t| rb.extend_from_slice(t.data()));
            for (p, q) in ra.iter().zip(&rb) {
                assert!((p - q).abs() < 1e-4 * (1.0 + q.abs()), "running statistic {p} vs {q}");
            }
        }
    }

    #[test]
    fn winograd_network_backward_matches_finite_differences() {
        let mut net = IResNet::new(&wide(), 7).unwrap();
        assert!(net.units[0].conv1.uses_winograd(8, 8) && net.units[0].conv2.uses_winograd(8, 8));
        net.set_input_grad(true);
        soften_kinks(&mut net);
        let x = Tensor::randn(&[2, 3, 8, 8], 1.0, &mut Rng::new(8));
        let opts = CheckOptions {
            eps: 2e-3,
            atol: 5e-3,
            rtol: 3e-2,
            max_checks: 8,
            seed: 2,
        };
        check_layer(&mut net, &x, &opts).unwrap();
    }

    #[test]
    fn shapes_names_and_presets() {
        let mut net = IResNet::new(&ResNetConfig::preset("small").unwrap(), 0).unwrap();
        let x = Tensor::zeros(&[2, 3, 28, 28]);
        let e = Backbone::forward(&mut net, &x, Mode::Eval);
        assert_eq!(e.shape(), &[2, 128]);
        let mut names = Vec::new();
        Backbone::visit_params(&mut net, &mut |p| names.push(p.name.clone()));
        for n in [
            "conv1.weight",
            "bn1.weight",
            "prelu.weight",
            "layer1.0.downsample.0.weight",
            "layer4.0.conv2.weight",
            "fc.bias",
            "features.weight",
        ] {
            assert!(names.iter().any(|m| m == n), "missing {n} in {names:?}");
        }
        let r50 = ResNetConfig::preset("resnet50").unwrap();
        assert_eq!(r50.output_size(), [7, 7]);
        assert_eq!(r50.units.iter().sum::<usize>(), 24);
        assert_eq!(ResNetConfig::preset("resnet152").unwrap().units, vec![3, 8, 36, 3]);
    }

    #[test]
    fn summary_counts_the_parameters_a_built_net_has() {
        let mut staged = tiny();
        staged.strides = vec![1, 2];
        staged.prelu = PreluMode::Shared;
        for cfg in [
            tiny(),
            staged,
            ResNetConfig::preset("small").unwrap(),
            ResNetConfig::preset("iresnet18").unwrap(),
        ] {
            let mut net = IResNet::new(&cfg, 0).unwrap();
            assert_eq!(Backbone::num_params(&mut net), cfg.summary().params, "{cfg:?}");
            let [h, w] = cfg.output_size();
            let last = cfg.summary().stages[cfg.units.len()].out_shape.clone();
            assert_eq!(last, vec![*cfg.widths.last().unwrap(), h, w]);
        }
    }

    #[test]
    fn bad_architecture_names_the_field() {
        let mut c = tiny();
        c.widths.push(8);
        assert_eq!(IResNet::new(&c, 0).err().unwrap().field, "widths");
        let mut c = tiny();
        c.dropout = 1.5;
        assert!(
            IResNet::new(&c, 0)
                .err()
                .unwrap()
                .to_string()
                .starts_with("model.dropout")
        );
    }
}
