//! The face ResNet in the IR style (insightface's IResNet, PLSC's ResNet50/101/152).
//!
//! - Stem: conv3×3 (stride 1) → BN → PReLU, no max-pool.
//! - IR unit: BN → conv3×3 → BN → PReLU → conv3×3 (stride s) → BN, plus a shortcut that is
//!   conv1×1 (stride s) → BN when the shape changes, else the identity; no activation after
//!   the sum. The first unit of each stage has stride 2.
//! - Head: BN → dropout → flatten → FC → BN (the embedding, not L2-normalised).
//!
//! One code path builds every depth: ResNet50/101/152 are units [3,4,14,3], [3,4,23,3] and
//! [3,8,36,3] at widths [64,128,256,512] on 112×112 input; the small CPU variant is one unit
//! per stage at widths [16,32,64,128] on 28×28. Parameter names follow insightface's IResNet
//! (`conv1`, `bn1`, `prelu`, `layer1.0.conv1`, …, `bn2`, `fc`, `features`).

use crate::{Backbone, BatchNorm, Conv2d, Dropout, Layer, Linear, Mode, PRelu, Param, PreluMode};
use lsc_tensor::{Rng, Tensor};
use serde::{Deserialize, Serialize};

/// Architecture of an IResNet. Deserialised from the `[model]` table of a config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNetConfig {
    /// IR units per stage.
    pub units: Vec<usize>,
    /// Output channels per stage; the stem has `widths[0]`.
    pub widths: Vec<usize>,
    pub emb_dim: usize,
    /// Input `[height, width]`; the input has 3 channels.
    pub input_size: [usize; 2],
    #[serde(default)]
    pub dropout: f32,
    #[serde(default = "default_prelu")]
    pub prelu: PreluMode,
    #[serde(default = "default_eps")]
    pub bn_eps: f32,
    /// Running-statistics update weight (PyTorch convention: 0.1 = PLSC's momentum 0.9).
    #[serde(default = "default_momentum")]
    pub bn_momentum: f32,
}

fn default_prelu() -> PreluMode {
    PreluMode::PerChannel
}
fn default_eps() -> f32 {
    2e-5
}
fn default_momentum() -> f32 {
    0.1
}

/// An architecture error names the field.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("model.{field}: {why}")]
pub struct ConfigError {
    pub field: &'static str,
    pub why: String,
}

impl ResNetConfig {
    /// A named preset: `resnet50`, `resnet101`, `resnet152` (PLSC: shared PReLU, dropout 0.4,
    /// 512-d, 112×112) or `small` (the CPU variant for 28×28 input).
    pub fn preset(name: &str) -> Option<ResNetConfig> {
        let face = |units: Vec<usize>| ResNetConfig {
            units,
            widths: vec![64, 128, 256, 512],
            emb_dim: 512,
            input_size: [112, 112],
            dropout: 0.4,
            prelu: PreluMode::Shared,
            bn_eps: 2e-5,
            bn_momentum: 0.1,
        };
        Some(match name {
            "resnet50" => face(vec![3, 4, 14, 3]),
            "resnet101" => face(vec![3, 4, 23, 3]),
            "resnet152" => face(vec![3, 8, 36, 3]),
            "small" => ResNetConfig {
                units: vec![1, 1, 1, 1],
                widths: vec![16, 32, 64, 128],
                emb_dim: 128,
                input_size: [28, 28],
                dropout: 0.0,
                prelu: PreluMode::PerChannel,
                bn_eps: 2e-5,
                bn_momentum: 0.1,
            },
            _ => return None,
        })
    }

    /// Checks the architecture, naming the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, why: String| Err(ConfigError { field, why });
        if self.units.is_empty() {
            return err("units", "needs at least one stage".into());
        }
        if self.units.len() != self.widths.len() {
            return err(
                "widths",
                format!("has {} entries but units has {}", self.widths.len(), self.units.len()),
            );
        }
        if self.units.contains(&0) {
            return err(
                "units",
                format!("{:?}: every stage needs at least one unit", self.units),
            );
        }
        if self.widths.contains(&0) {
            return err("widths", format!("{:?}: widths must be positive", self.widths));
        }
        if self.emb_dim == 0 {
            return err("emb_dim", "must be positive".into());
        }
        if self.input_size.contains(&0) {
            return err("input_size", format!("{:?} must be positive", self.input_size));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return err("dropout", format!("{} outside [0, 1)", self.dropout));
        }
        if !(self.bn_eps > 0.0) {
            return err("bn_eps", format!("{} must be positive", self.bn_eps));
        }
        if !(0.0..=1.0).contains(&self.bn_momentum) {
            return err("bn_momentum", format!("{} outside [0, 1]", self.bn_momentum));
        }
        Ok(())
    }

    /// Spatial size after the stages (each halves it, rounding up).
    pub fn output_size(&self) -> [usize; 2] {
        let mut s = self.input_size;
        for _ in &self.units {
            s = [s[0].div_ceil(2), s[1].div_ceil(2)];
        }
        s
    }
}

/// One IR unit.
pub struct IrUnit {
    bn1: BatchNorm,
    conv1: Conv2d,
    bn2: BatchNorm,
    prelu: PRelu,
    conv2: Conv2d,
    bn3: BatchNorm,
    down: Option<(Conv2d, BatchNorm)>,
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
}

impl Layer for IrUnit {
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Tensor {
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
        let _t = crate::profile::scope("add", 0.0);
        h.add_assign(&short).expect("IR unit: branch shapes agree");
        h
    }

    fn backward(&mut self, dy: &Tensor) -> Tensor {
        let mut d = dy.clone();
        for l in self.layers().into_iter().rev() {
            d = l.backward(&d);
        }
        let ds = match &mut self.down {
            Some((c, b)) => {
                let s = b.backward(dy);
                c.backward(&s)
            }
            None => dy.clone(),
        };
        d.add_assign(&ds).expect("IR unit: gradient shapes agree");
        d
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
    cfg: ResNetConfig,
    conv1: Conv2d,
    bn1: BatchNorm,
    prelu: PRelu,
    units: Vec<IrUnit>,
    bn2: BatchNorm,
    dropout: Dropout,
    fc: Linear,
    features: BatchNorm,
    flat_shape: Vec<usize>,
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
        let mut cin = w0;
        for (s, (&n, &w)) in cfg.units.iter().zip(&cfg.widths).enumerate() {
            for j in 0..n {
                let stride = if j == 0 { 2 } else { 1 };
                units.push(IrUnit::new(
                    &format!("layer{}.{j}", s + 1),
                    cin,
                    w,
                    stride,
                    cfg,
                    &mut rng,
                ));
                cin = w;
            }
        }
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
}

impl Layer for IResNet {
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Tensor {
        let [h, w] = self.cfg.input_size;
        assert!(
            x.shape().len() == 4 && x.shape()[1..] == [3, h, w],
            "IResNet: expected input [N, 3, {h}, {w}], got {:?}",
            x.shape()
        );
        let mut t = self.conv1.forward(x, mode);
        t = self.bn1.forward(&t, mode);
        t = self.prelu.forward(&t, mode);
        for u in &mut self.units {
            t = u.forward(&t, mode);
        }
        t = self.bn2.forward(&t, mode);
        t = self.dropout.forward(&t, mode);
        self.flat_shape = t.shape().to_vec();
        let n = t.dim(0);
        let flat = t.numel() / n.max(1);
        let t = t.reshape(&[n, flat]).expect("flatten keeps the element count");
        let e = self.fc.forward(&t, mode);
        self.features.forward(&e, mode)
    }

    fn backward(&mut self, d_emb: &Tensor) -> Tensor {
        let d = self.features.backward(d_emb);
        let d = self.fc.backward(&d);
        let d = d.reshape(&self.flat_shape).expect("unflatten keeps the element count");
        let mut d = self.dropout.backward(&d);
        d = self.bn2.backward(&d);
        for u in self.units.iter_mut().rev() {
            d = u.backward(&d);
        }
        d = self.prelu.backward(&d);
        d = self.bn1.backward(&d);
        self.conv1.backward(&d)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{CheckOptions, check_layer};

    fn tiny() -> ResNetConfig {
        ResNetConfig {
            units: vec![1, 2],
            widths: vec![3, 4],
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
