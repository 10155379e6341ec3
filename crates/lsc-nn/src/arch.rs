//! Architectures of the face IResNet: the presets, the `[model]` table of a config (a preset
//! name, explicit per-stage lists or a list of stages), validation, and the analytic summary
//! (per-stage output shapes, parameter count, forward FLOPs).
//!
//! The key decision: [`ResNetConfig`] is always fully resolved (every field explicit), so
//! code that reads `cfg.model.emb_dim` never sees a preset name. The TOML form
//! ([`ModelSpec`]) is resolved on deserialisation: start from the preset `name` (the built-in
//! defaults name `small`), then every key given overrides it. Serialising writes every field
//! back explicitly (no name), so a resolved config reads back to itself.
//!
//! ```toml
//! [model]
//! name = "resnet50"            # a preset (see PRESETS), or
//! emb_dim = 256                # any key overrides the preset
//! stages = [                   # the body as a list of stages (instead of units/widths/strides)
//!   { unit = "ir", depth = 2, width = 32, stride = 2 },
//!   { unit = "ir", depth = 2, width = 64, stride = 2 },
//! ]
//! ```

use crate::PreluMode;
use serde::{Deserialize, Serialize};

/// Every preset name [`ResNetConfig::preset`] knows.
pub const PRESETS: &[&str] = &[
    "small",
    "resnet50",
    "resnet101",
    "resnet152",
    "iresnet18",
    "iresnet34",
    "iresnet50",
    "iresnet100",
];

/// The unit types a stage may be built from.
pub const UNIT_TYPES: &[&str] = &["ir"];

/// Architecture of an IResNet, fully resolved. Read from the `[model]` table of a config
/// through [`ModelSpec`] (presets, stage lists); written back with every field explicit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ModelSpec", into = "ModelSpec")]
pub struct ResNetConfig {
    /// IR units per stage.
    pub units: Vec<usize>,
    /// Output channels per stage; the stem has `widths[0]`.
    pub widths: Vec<usize>,
    /// Stride of the first unit of each stage (2 halves the map; the others have stride 1).
    pub strides: Vec<usize>,
    pub emb_dim: usize,
    /// Input `[height, width]`; the input has 3 channels.
    pub input_size: [usize; 2],
    /// Dropout before the embedding FC (training only).
    pub dropout: f32,
    pub prelu: PreluMode,
    pub bn_eps: f32,
    /// Running-statistics update weight (PyTorch convention: 0.1 = PLSC's momentum 0.9).
    pub bn_momentum: f32,
}

/// An architecture error names the field (`model.stages[2].width: must be > 0`).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("model.{field}: {why}")]
pub struct ConfigError {
    /// The field under `model.`, with an index where it applies (`widths[1]`).
    pub field: String,
    pub why: String,
}

fn cfg_err<T>(field: impl Into<String>, why: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError {
        field: field.into(),
        why: why.into(),
    })
}

/// One stage of a TOML-declared body: `{ unit = "ir", depth = 3, width = 64, stride = 2 }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// The unit type (default `"ir"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Units in the stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<i64>,
    /// Output channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<i64>,
    /// Stride of the stage's first unit (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stride: Option<i64>,
}

/// The `[model]` table as written: every key optional, resolved into a [`ResNetConfig`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// A preset to start from (see [`PRESETS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<Vec<usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub widths: Option<Vec<usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strides: Option<Vec<usize>>,
    /// The body as a list of stages, instead of `units`/`widths`/`strides`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<Vec<StageSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emb_dim: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_size: Option<[usize; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prelu: Option<PreluMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bn_eps: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bn_momentum: Option<f32>,
}

impl From<ResNetConfig> for ModelSpec {
    fn from(c: ResNetConfig) -> ModelSpec {
        ModelSpec {
            name: None,
            units: Some(c.units),
            widths: Some(c.widths),
            strides: Some(c.strides),
            stages: None,
            emb_dim: Some(c.emb_dim),
            input_size: Some(c.input_size),
            dropout: Some(c.dropout),
            prelu: Some(c.prelu),
            bn_eps: Some(c.bn_eps),
            bn_momentum: Some(c.bn_momentum),
        }
    }
}

/// A positive integer field of a stage.
fn positive(field: String, v: Option<i64>, default: Option<i64>) -> Result<usize, ConfigError> {
    match v.or(default) {
        None => cfg_err(field, "missing"),
        Some(v) if v <= 0 => cfg_err(field, format!("must be > 0 (got {v})")),
        Some(v) => Ok(v as usize),
    }
}

impl TryFrom<ModelSpec> for ResNetConfig {
    type Error = ConfigError;

    /// The preset `name` (if any) overridden by every key given. Structural problems of a
    /// stage list are reported here; the rest by [`ResNetConfig::validate`].
    fn try_from(s: ModelSpec) -> Result<ResNetConfig, ConfigError> {
        let base = match &s.name {
            Some(n) => Some(ResNetConfig::preset(n).ok_or_else(|| ConfigError {
                field: "name".into(),
                why: format!("unknown preset {n:?} (known: {})", PRESETS.join(", ")),
            })?),
            None => None,
        };
        let need = |field: &str| ConfigError {
            field: field.into(),
            why: "missing (set it, or start from a preset with model.name)".into(),
        };
        let (units, widths, strides) = match s.stages {
            Some(stages) => {
                for (field, given) in [
                    ("units", s.units.is_some()),
                    ("widths", s.widths.is_some()),
                    ("strides", s.strides.is_some()),
                ] {
                    if given {
                        return cfg_err(field, "give either model.stages or units/widths/strides, not both");
                    }
                }
                if stages.is_empty() {
                    return cfg_err("stages", "needs at least one stage");
                }
                let (mut u, mut w, mut st) = (Vec::new(), Vec::new(), Vec::new());
                for (i, g) in stages.iter().enumerate() {
                    let f = |k: &str| format!("stages[{i}].{k}");
                    let unit = g.unit.as_deref().unwrap_or("ir");
                    if !UNIT_TYPES.contains(&unit) {
                        return cfg_err(
                            f("unit"),
                            format!("{unit:?} is not a unit type (known: {})", UNIT_TYPES.join(", ")),
                        );
                    }
                    u.push(positive(f("depth"), g.depth, None)?);
                    w.push(positive(f("width"), g.width, None)?);
                    st.push(positive(f("stride"), g.stride, Some(2))?);
                }
                (u, w, st)
            }
            None => {
                let units = s
                    .units
                    .or_else(|| base.as_ref().map(|b| b.units.clone()))
                    .ok_or_else(|| need("units"))?;
                let widths = s
                    .widths
                    .or_else(|| base.as_ref().map(|b| b.widths.clone()))
                    .ok_or_else(|| need("widths"))?;
                // Every preset halves the map at each stage: the default follows `units`.
                let strides = s.strides.unwrap_or_else(|| vec![2; units.len()]);
                (units, widths, strides)
            }
        };
        macro_rules! take {
            ($f:ident) => {
                s.$f.or_else(|| base.as_ref().map(|b| b.$f.clone()))
                    .ok_or_else(|| need(stringify!($f)))?
            };
        }
        Ok(ResNetConfig {
            units,
            widths,
            strides,
            emb_dim: take!(emb_dim),
            input_size: take!(input_size),
            dropout: s.dropout.or(base.as_ref().map(|b| b.dropout)).unwrap_or(0.0),
            prelu: s
                .prelu
                .or(base.as_ref().map(|b| b.prelu))
                .unwrap_or(PreluMode::PerChannel),
            bn_eps: s.bn_eps.or(base.as_ref().map(|b| b.bn_eps)).unwrap_or(2e-5),
            bn_momentum: s.bn_momentum.or(base.as_ref().map(|b| b.bn_momentum)).unwrap_or(0.1),
        })
    }
}

/// One row of [`Summary`]: the stem, a stage, or the embedding head.
#[derive(Clone, Debug, PartialEq)]
pub struct StageSummary {
    /// `stem`, `layer1` … `layerN`, `head`.
    pub name: String,
    /// IR units (0 for the stem and the head).
    pub units: usize,
    /// Output of one image: `[C, H, W]`, or `[emb_dim]` for the head.
    pub out_shape: Vec<usize>,
    pub params: usize,
    /// Forward FLOPs per image: 2 × the multiply-accumulates of its convolutions and FC.
    pub flops: u64,
}

/// What an architecture costs, computed from the config alone (nothing is allocated).
///
/// FLOPs follow `resnet_bench.py --mode flops` (2 × conv and FC multiply-accumulates; BN,
/// PReLU and the residual adds are counted apart, as elements).
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub stages: Vec<StageSummary>,
    pub params: usize,
    pub flops: u64,
    pub conv_macs: u64,
    pub linear_macs: u64,
    /// Output elements of every BN and PReLU per image.
    pub bn_elems: u64,
    pub prelu_elems: u64,
}

/// Output side of a 3×3 pad-1 or 1×1 pad-0 convolution with `stride`.
fn out_side(h: usize, stride: usize) -> usize {
    (h - 1) / stride + 1
}

#[derive(Default)]
struct Tally {
    params: usize,
    conv_macs: u64,
    bn_elems: u64,
    prelu_elems: u64,
}

impl Tally {
    fn conv(&mut self, cin: usize, cout: usize, k: usize, oh: usize, ow: usize) {
        self.params += cout * cin * k * k;
        self.conv_macs += (cout * cin * k * k * oh * ow) as u64;
    }
    fn bn(&mut self, c: usize, elems: usize) {
        self.params += 2 * c;
        self.bn_elems += elems as u64;
    }
    fn prelu(&mut self, c: usize, elems: usize, mode: PreluMode) {
        self.params += match mode {
            PreluMode::PerChannel => c,
            PreluMode::Shared => 1,
        };
        self.prelu_elems += elems as u64;
    }
}

impl ResNetConfig {
    /// A named preset (every one in [`PRESETS`]), all on 112×112 input with IR units, BN eps
    /// 2e-5, dropout 0.4 before the embedding FC and a 512-d embedding, except `small`:
    ///
    /// | name | units | widths | PReLU |
    /// | --- | --- | --- | --- |
    /// | `resnet50` / `101` / `152` (PLSC) | [3,4,14,3] / [3,4,23,3] / [3,8,36,3] | 64-128-256-512 | one α per layer |
    /// | `iresnet18` / `34` / `50` / `100` (insightface) | [2,2,2,2] / [3,4,6,3] / [3,4,14,3] / [3,13,30,3] | 64-128-256-512 | one α per channel |
    /// | `small` (the CPU job, 28×28, 128-d, no dropout) | [1,1,1,1] | 16-32-64-128 | per channel |
    ///
    /// insightface's PyTorch `arcface_torch` trains its IResNets with BN eps 1e-5 and no
    /// dropout; set `bn_eps = 1e-5` and `dropout = 0.0` to match it exactly.
    pub fn preset(name: &str) -> Option<ResNetConfig> {
        let face = |units: Vec<usize>, prelu| ResNetConfig {
            strides: vec![2; units.len()],
            units,
            widths: vec![64, 128, 256, 512],
            emb_dim: 512,
            input_size: [112, 112],
            dropout: 0.4,
            prelu,
            bn_eps: 2e-5,
            bn_momentum: 0.1,
        };
        use PreluMode::{PerChannel, Shared};
        Some(match name {
            "resnet50" => face(vec![3, 4, 14, 3], Shared),
            "resnet101" => face(vec![3, 4, 23, 3], Shared),
            "resnet152" => face(vec![3, 8, 36, 3], Shared),
            "iresnet18" => face(vec![2, 2, 2, 2], PerChannel),
            "iresnet34" => face(vec![3, 4, 6, 3], PerChannel),
            "iresnet50" => face(vec![3, 4, 14, 3], PerChannel),
            "iresnet100" => face(vec![3, 13, 30, 3], PerChannel),
            "small" => ResNetConfig {
                units: vec![1, 1, 1, 1],
                widths: vec![16, 32, 64, 128],
                strides: vec![2, 2, 2, 2],
                emb_dim: 128,
                input_size: [28, 28],
                dropout: 0.0,
                prelu: PerChannel,
                bn_eps: 2e-5,
                bn_momentum: 0.1,
            },
            _ => return None,
        })
    }

    /// The preset this config is exactly, if any.
    pub fn preset_name(&self) -> Option<&'static str> {
        PRESETS
            .iter()
            .copied()
            .find(|n| ResNetConfig::preset(n).as_ref() == Some(self))
    }

    /// Checks the architecture, naming the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.units.is_empty() {
            return cfg_err("units", "needs at least one stage");
        }
        for (field, n) in [("widths", self.widths.len()), ("strides", self.strides.len())] {
            if n != self.units.len() {
                return cfg_err(field, format!("has {n} entries but units has {}", self.units.len()));
            }
        }
        for (field, v) in [
            ("units", &self.units),
            ("widths", &self.widths),
            ("strides", &self.strides),
        ] {
            if let Some(i) = v.iter().position(|&x| x == 0) {
                return cfg_err(format!("{field}[{i}]"), format!("must be > 0 (in {v:?})"));
            }
        }
        if self.emb_dim == 0 {
            return cfg_err("emb_dim", "must be > 0");
        }
        if self.input_size.contains(&0) {
            return cfg_err("input_size", format!("{:?}: must be > 0", self.input_size));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return cfg_err("dropout", format!("{} outside [0, 1)", self.dropout));
        }
        if !(self.bn_eps > 0.0) {
            return cfg_err("bn_eps", format!("{} must be > 0", self.bn_eps));
        }
        if !(0.0..=1.0).contains(&self.bn_momentum) {
            return cfg_err("bn_momentum", format!("{} outside [0, 1]", self.bn_momentum));
        }
        Ok(())
    }

    /// Spatial size after the stages (a stride-s stage maps h to ⌈h / s⌉).
    pub fn output_size(&self) -> [usize; 2] {
        let mut s = self.input_size;
        for &st in &self.strides {
            s = [out_side(s[0], st), out_side(s[1], st)];
        }
        s
    }

    /// The stages as `(stage index, unit index, cin, cout, stride)`, in order.
    pub fn unit_plan(&self) -> Vec<(usize, usize, usize, usize, usize)> {
        let mut out = Vec::new();
        let mut cin = self.widths[0];
        for (s, ((&n, &w), &st)) in self.units.iter().zip(&self.widths).zip(&self.strides).enumerate() {
            for j in 0..n {
                out.push((s, j, cin, w, if j == 0 { st } else { 1 }));
                cin = w;
            }
        }
        out
    }

    /// Per-stage output shapes, parameters and forward FLOPs per image, from the config alone.
    /// The config must be valid.
    pub fn summary(&self) -> Summary {
        let [mut h, mut w] = self.input_size;
        let w0 = self.widths[0];
        let mut rows = Vec::new();
        let mut total = Tally::default();
        let mut push = |name: String, units, out_shape, t: Tally, linear_macs: u64, total: &mut Tally| {
            total.params += t.params;
            total.conv_macs += t.conv_macs;
            total.bn_elems += t.bn_elems;
            total.prelu_elems += t.prelu_elems;
            rows.push(StageSummary {
                name,
                units,
                out_shape,
                params: t.params,
                flops: 2 * (t.conv_macs + linear_macs),
            });
        };
        let mut t = Tally::default();
        t.conv(3, w0, 3, h, w);
        t.bn(w0, w0 * h * w);
        t.prelu(w0, w0 * h * w, self.prelu);
        push("stem".into(), 0, vec![w0, h, w], t, 0, &mut total);
        let mut cin = w0;
        for (s, ((&n, &cout), &stride)) in self.units.iter().zip(&self.widths).zip(&self.strides).enumerate() {
            let mut t = Tally::default();
            for j in 0..n {
                let st = if j == 0 { stride } else { 1 };
                let (oh, ow) = (out_side(h, st), out_side(w, st));
                t.bn(cin, cin * h * w);
                t.conv(cin, cout, 3, h, w);
                t.bn(cout, cout * h * w);
                t.prelu(cout, cout * h * w, self.prelu);
                t.conv(cout, cout, 3, oh, ow);
                t.bn(cout, cout * oh * ow);
                if st != 1 || cin != cout {
                    t.conv(cin, cout, 1, oh, ow);
                    t.bn(cout, cout * oh * ow);
                }
                (h, w, cin) = (oh, ow, cout);
            }
            push(format!("layer{}", s + 1), n, vec![cout, h, w], t, 0, &mut total);
        }
        let mut t = Tally::default();
        let flat = cin * h * w;
        t.bn(cin, flat);
        t.params += flat * self.emb_dim + self.emb_dim;
        t.bn(self.emb_dim, self.emb_dim);
        let linear_macs = (flat * self.emb_dim) as u64;
        push("head".into(), 0, vec![self.emb_dim], t, linear_macs, &mut total);
        Summary {
            stages: rows,
            params: total.params,
            flops: 2 * (total.conv_macs + linear_macs),
            conv_macs: total.conv_macs,
            linear_macs,
            bn_elems: total.bn_elems,
            prelu_elems: total.prelu_elems,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Figures printed by the PyTorch baseline, /work/shared/bench/resnet_bench.py (torch
    /// 2.x, CPU), for the insightface IResNets (per-channel PReLU):
    ///
    ///     python resnet_bench.py --arch r18 --mode flops
    ///     {"arch": "r18", "params_M": 24.026, "conv_macs": 2597109760, "linear_macs": 12845056,
    ///      "total_gflops": 5.2199, "bn_elems": 5369344, "prelu_elems": 2684416}
    ///     r34:  conv_macs 4446797824,  bn_elems 7250944,  prelu_elems 3311616
    ///     r50:  conv_macs 6296485888,  bn_elems 8455168,  prelu_elems 3713024  (total_gflops 12.6187)
    ///     r100: conv_macs 12076761088, bn_elems 13573120, prelu_elems 5419008  (total_gflops 24.1792)
    ///
    /// and, with `count_flops` on `resnet_bench.IResNet([3,4,23,3])` / `([3,8,36,3])` (the
    /// script's --arch has no 101/152):
    ///     [3,4,23,3]: conv_macs 8377384960,  bn_elems 9809920,  prelu_elems 4164608, params 54223808
    ///     [3,8,36,3]: conv_macs 12307972096, bn_elems 12971008, prelu_elems 5218304, params 70765760
    /// Exact parameter counts (`sum(p.numel() for p in model.parameters())`):
    ///     r18 24025600, r34 34139328, r50 43590848, r100 65156160.
    /// Every one has linear_macs 12845056 (25088 × 512).
    #[test]
    fn flops_and_params_equal_the_pytorch_baseline() {
        let lin = 12_845_056u64;
        for (name, conv, bn, prelu, params) in [
            (
                "iresnet18",
                2_597_109_760u64,
                5_369_344u64,
                2_684_416u64,
                24_025_600usize,
            ),
            ("iresnet34", 4_446_797_824, 7_250_944, 3_311_616, 34_139_328),
            ("iresnet50", 6_296_485_888, 8_455_168, 3_713_024, 43_590_848),
            ("iresnet100", 12_076_761_088, 13_573_120, 5_419_008, 65_156_160),
        ] {
            let s = ResNetConfig::preset(name).unwrap().summary();
            assert_eq!(
                (s.conv_macs, s.linear_macs, s.bn_elems, s.prelu_elems, s.params),
                (conv, lin, bn, prelu, params),
                "{name}"
            );
            assert_eq!(s.flops, 2 * (conv + lin), "{name}");
        }
        // resnet50 = r50's layers: 2 × (6296485888 + 12845056) = 12618661888 FLOPs (the
        // script's 12.6187 GFLOPs); one PReLU α per layer instead of per channel.
        let r50 = ResNetConfig::preset("resnet50").unwrap().summary();
        assert_eq!(r50.flops, 12_618_661_888);
        // 25 PReLU layers holding 5888 α per channel, 25 shared.
        assert_eq!(r50.params, 43_590_848 - 5888 + 25);
        for (name, conv, bn, prelu, params, layers) in [
            (
                "resnet101",
                8_377_384_960u64,
                9_809_920u64,
                4_164_608u64,
                54_223_808usize,
                [3, 4, 23, 3],
            ),
            (
                "resnet152",
                12_307_972_096,
                12_971_008,
                5_218_304,
                70_765_760,
                [3, 8, 36, 3],
            ),
        ] {
            let mut c = ResNetConfig::preset(name).unwrap();
            assert_eq!(c.units, layers);
            let s = c.summary();
            assert_eq!((s.conv_macs, s.bn_elems, s.prelu_elems), (conv, bn, prelu), "{name}");
            c.prelu = PreluMode::PerChannel;
            assert_eq!(c.summary().params, params, "{name}");
        }
    }

    #[test]
    fn shapes_per_stage() {
        let s = ResNetConfig::preset("resnet50").unwrap().summary();
        let shapes: Vec<(&str, Vec<usize>)> = s
            .stages
            .iter()
            .map(|r| (r.name.as_str(), r.out_shape.clone()))
            .collect();
        assert_eq!(
            shapes,
            vec![
                ("stem", vec![64, 112, 112]),
                ("layer1", vec![64, 56, 56]),
                ("layer2", vec![128, 28, 28]),
                ("layer3", vec![256, 14, 14]),
                ("layer4", vec![512, 7, 7]),
                ("head", vec![512]),
            ]
        );
        assert_eq!(s.stages.iter().map(|r| r.params).sum::<usize>(), s.params);
        assert_eq!(s.stages.iter().map(|r| r.flops).sum::<u64>(), s.flops);
    }

    fn parse(text: &str) -> Result<ResNetConfig, String> {
        toml::from_str::<ResNetConfig>(text).map_err(|e| e.message().to_string())
    }

    #[test]
    fn presets_stage_lists_and_overrides_resolve() {
        let r = parse("name = \"iresnet100\"\nemb_dim = 256\n").unwrap();
        assert_eq!(
            (r.units.clone(), r.emb_dim, r.prelu),
            (vec![3, 13, 30, 3], 256, PreluMode::PerChannel)
        );
        assert_eq!(r.preset_name(), None);
        let text = r#"
            emb_dim = 64
            input_size = [32, 32]
            prelu = "shared"
            stages = [
              { unit = "ir", depth = 2, width = 8, stride = 2 },
              { depth = 1, width = 16, stride = 1 },
              { depth = 1, width = 16 },
            ]
        "#;
        let c = parse(text).unwrap();
        assert_eq!(
            (c.units.clone(), c.widths.clone(), c.strides.clone()),
            (vec![2, 1, 1], vec![8, 16, 16], vec![2, 1, 2])
        );
        assert_eq!((c.dropout, c.bn_eps, c.prelu), (0.0, 2e-5, PreluMode::Shared));
        c.validate().unwrap();
        assert_eq!(c.output_size(), [8, 8]);
        // A resolved config serialises explicitly and reads back to itself.
        let back = parse(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        for n in PRESETS {
            let p = ResNetConfig::preset(n).unwrap();
            p.validate().unwrap();
            assert_eq!(p.preset_name(), Some(*n));
            assert_eq!(parse(&format!("name = {n:?}")).unwrap(), p);
        }
    }

    #[test]
    fn bad_declarations_name_the_field() {
        for (text, want) in [
            (
                "name = \"small\"\nstages = [{depth = 1, width = 8}, {depth = 1, width = 8}, {depth = 2, width = 0}]",
                "model.stages[2].width: must be > 0 (got 0)",
            ),
            (
                "name = \"small\"\nstages = [{depth = -1, width = 8}]",
                "model.stages[0].depth: must be > 0 (got -1)",
            ),
            (
                "name = \"small\"\nstages = [{width = 8}]",
                "model.stages[0].depth: missing",
            ),
            (
                "name = \"small\"\nstages = [{unit = \"bottleneck\", depth = 1, width = 8}]",
                "model.stages[0].unit: \"bottleneck\" is not a unit type (known: ir)",
            ),
            (
                "name = \"small\"\nstages = []",
                "model.stages: needs at least one stage",
            ),
            (
                "name = \"small\"\nunits = [1]\nstages = [{depth = 1, width = 8}]",
                "model.units: give either model.stages",
            ),
            ("name = \"resnet51\"", "model.name: unknown preset \"resnet51\""),
            ("units = [1]\nwidths = [8]\nemb_dim = 4", "model.input_size: missing"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.starts_with(want), "{text}: {e}");
        }
        let mut c = ResNetConfig::preset("small").unwrap();
        c.widths[1] = 0;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "model.widths[1]: must be > 0 (in [16, 0, 64, 128])"
        );
        c.widths.push(8);
        assert_eq!(c.validate().unwrap_err().field, "widths");
        let mut c = ResNetConfig::preset("small").unwrap();
        c.strides = vec![2, 2];
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("model.strides: has 2 entries")
        );
    }
}
