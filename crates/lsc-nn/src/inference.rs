//! Inference with BN folded: [`InferenceNet`] is an [`IResNet`] in eval mode with every BN
//! that follows a convolution or the FC folded into it, and an exported model directory.
//!
//! An eval-mode BN is the per-channel affine map `y = a·x + b`, `a = γ / √(σ² + ε)`,
//! `b = β − μ·a`. Folded (all in f64, stored in f32):
//! - a BN after a convolution (stem `bn1`, unit `bn2` and `bn3`, `downsample.1`): the conv
//!   gets weight `a[co]·W[co]` and bias `b[co]`. Exact, padding included: the BN acts on the
//!   conv's output.
//! - the head: `bn2` (BN2d) → flatten → `fc` → `features` (BN1d) becomes one FC. `features`
//!   folds into the FC's rows; `bn2` folds into its columns (`W[o, c·P + p]·a[c]`, bias
//!   `+ Σ W[o, c·P + p]·b[c]`), exact because the FC has no padding.
//! - the BN that opens each IR unit (`layer*.*.bn1`) precedes a zero-padded 3×3 conv:
//!   folding its shift into the conv would add `b` at the padded border pixels too, which the
//!   training graph never does. It is kept as a per-channel scale and shift.
//!
//! Each convolution's bias is added in one pass over its output together with what follows
//! it: the PReLU after a unit's first conv, the residual sum after its second.
//!
//! An exported model is a directory holding `model.safetensors` (the folded tensors, named
//! below) and `model.toml` ([`ExportManifest`]: architecture, input shape, normalisation,
//! embedding size, source checkpoint and step, the weights file's size and lsc64 hash). It is
//! written into a temporary directory beside the target and renamed into place.
//!
//! Tensor names in `model.safetensors`: `conv1.weight`, `conv1.bias`, `prelu.weight`; per
//! unit `layer{s}.{j}.bn1.scale`, `.bn1.shift`, `.conv1.weight`, `.conv1.bias`,
//! `.prelu.weight`, `.conv2.weight`, `.conv2.bias`, and with a projection shortcut
//! `.downsample.0.weight`, `.downsample.0.bias`; `fc.weight` `[emb, C·H·W]`, `fc.bias`.

use crate::{BatchNorm, Conv2d, IResNet, Linear, ResNetConfig};
use lsc_ckpt::{Data, FileEntry, NamedTensor};
use lsc_tensor::Tensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "lsc-inference-model";
pub const VERSION: u32 = 1;
/// The manifest of an exported model directory.
pub const MANIFEST: &str = "model.toml";
/// The folded weights of an exported model directory.
pub const WEIGHTS: &str = "model.safetensors";
/// The pixel normalisation lsc-data applies (PLSC's): `(x − 127.5) / 128` on 0..255 RGB.
pub const PIXEL_MEAN: f32 = 127.5;
pub const PIXEL_STD: f32 = 128.0;

/// `model.toml` of an exported model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportManifest {
    pub format: String,
    pub version: u32,
    /// One input image `[C, H, W]`, channels RGB, batches NCHW f32.
    pub input_shape: [usize; 3],
    /// `input = (pixel − mean) / std` for 0..255 pixel values.
    pub mean: f32,
    pub std: f32,
    pub emb_dim: usize,
    /// False: the embedding is the folded `features` BN's output; L2-normalise it to compare
    /// faces by cosine.
    pub l2_normalized: bool,
    /// Every BN after a conv or the FC is folded (see the module docs).
    pub bn_folded: bool,
    /// The checkpoint directory the weights came from, and its global step.
    pub source_checkpoint: String,
    pub source_step: u64,
    /// `model.safetensors`: size and lsc64 hash, checked on load.
    pub weights: FileEntry,
    /// The architecture (every field explicit).
    pub model: ResNetConfig,
}

impl ExportManifest {
    /// Reads and checks `dir/model.toml` (format and version; not the weights).
    pub fn read(dir: &Path) -> Result<ExportManifest, ExportError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let m: ExportManifest = toml::from_str(&text).map_err(|e| invalid(&path, e.to_string()))?;
        if m.format != FORMAT || m.version != VERSION {
            return Err(invalid(
                &path,
                format!(
                    "format {} version {} (this build reads {FORMAT} version {VERSION})",
                    m.format, m.version
                ),
            ));
        }
        m.model.validate().map_err(|e| invalid(&path, e.to_string()))?;
        Ok(m)
    }
}

/// An exported model that could not be written or read; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error("{0}")]
    Ckpt(#[from] lsc_ckpt::CkptError),
    #[error("{path}: {why}")]
    Invalid { path: String, why: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |err| ExportError::Io {
        path: path.display().to_string(),
        err,
    }
}

fn invalid(path: &Path, why: impl Into<String>) -> ExportError {
    ExportError::Invalid {
        path: path.display().to_string(),
        why: why.into(),
    }
}

/// `(a, b)` of an eval-mode BN: `y = a·x + b` per channel.
fn bn_affine(bn: &BatchNorm) -> (Vec<f64>, Vec<f64>) {
    let (g, be) = (bn.weight.value.data(), bn.bias.value.data());
    let (m, v) = (bn.running_mean.data(), bn.running_var.data());
    let a: Vec<f64> = (0..g.len())
        .map(|c| g[c] as f64 / (v[c] as f64 + bn.eps as f64).sqrt())
        .collect();
    let b = (0..g.len()).map(|c| be[c] as f64 - m[c] as f64 * a[c]).collect();
    (a, b)
}

/// A convolution with a per-output-channel bias.
struct BiasConv {
    conv: Conv2d,
    bias: Vec<f32>,
}

impl BiasConv {
    /// `conv` followed by `bn`, as one convolution.
    fn fold(conv: &Conv2d, bn: &BatchNorm) -> BiasConv {
        let (a, b) = bn_affine(bn);
        let (_, cout, _, stride, pad) = conv.geometry();
        let w = conv.weight.value.data();
        let per = w.len() / cout;
        let folded: Vec<f32> = w
            .iter()
            .enumerate()
            .map(|(i, &v)| (v as f64 * a[i / per]) as f32)
            .collect();
        let name = conv.weight.name.trim_end_matches(".weight");
        BiasConv {
            conv: Conv2d::from_weight(
                name,
                Tensor::from_vec(conv.weight.value.shape(), folded).expect("same length"),
                stride,
                pad,
            ),
            bias: b.iter().map(|&v| v as f32).collect(),
        }
    }

    fn name(&self) -> &str {
        self.conv.weight.name.trim_end_matches(".weight")
    }

    fn tensors(&self, out: &mut Vec<NamedTensor>) {
        let w = &self.conv.weight.value;
        out.push(NamedTensor::f32(
            format!("{}.weight", self.name()),
            w.shape(),
            w.data().to_vec(),
        ));
        out.push(NamedTensor::f32(
            format!("{}.bias", self.name()),
            &[self.bias.len()],
            self.bias.clone(),
        ));
    }
}

/// `y ← y + bias[c]`, then PReLU with `alpha` (one or one per channel) if given, then
/// `+ res` if given: one pass over the output.
fn epilogue(y: &mut Tensor, bias: &[f32], alpha: Option<&[f32]>, res: Option<&Tensor>) {
    let _t = crate::profile::scope("epilogue", 0.0);
    let c = bias.len();
    let hw = (y.numel() / y.dim(0).max(1) / c).max(1);
    if let Some(r) = res {
        assert_eq!(r.shape(), y.shape(), "residual shape");
    }
    let rd: &[f32] = res.map_or(&[], |r| r.data());
    y.data_mut().par_chunks_mut(hw).enumerate().for_each(|(i, p)| {
        let ch = i % c;
        let b = bias[ch];
        match alpha {
            Some(a) => {
                let al = a[if a.len() == 1 { 0 } else { ch }];
                for v in p.iter_mut() {
                    let t = *v + b;
                    *v = if t > 0.0 { t } else { al * t };
                }
            }
            None => {
                for v in p.iter_mut() {
                    *v += b;
                }
            }
        }
        if !rd.is_empty() {
            for (v, &r) in p.iter_mut().zip(&rd[i * hw..(i + 1) * hw]) {
                *v += r;
            }
        }
    });
}

/// `y = scale[c]·x + shift[c]`.
fn affine(x: &Tensor, scale: &[f32], shift: &[f32]) -> Tensor {
    let _t = crate::profile::scope("affine", 0.0);
    let c = scale.len();
    let hw = (x.numel() / x.dim(0).max(1) / c).max(1);
    let mut y = Tensor::zeros(x.shape());
    y.data_mut()
        .par_chunks_mut(hw)
        .zip(x.data().par_chunks(hw))
        .enumerate()
        .for_each(|(i, (yp, xp))| {
            let (a, b) = (scale[i % c], shift[i % c]);
            for (o, &v) in yp.iter_mut().zip(xp) {
                *o = a * v + b;
            }
        });
    y
}

/// Fills one named tensor of a given shape (see [`InferenceNet::load`]).
type Take<'a> = dyn FnMut(&str, &[usize], &mut [f32]) + 'a;

/// One IR unit, folded.
struct InfUnit {
    prefix: String,
    /// The unit's opening BN, kept (see the module docs).
    scale: Vec<f32>,
    shift: Vec<f32>,
    conv1: BiasConv,
    prelu: Vec<f32>,
    conv2: BiasConv,
    down: Option<BiasConv>,
}

impl InfUnit {
    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = self.conv1.conv.infer(&affine(x, &self.scale, &self.shift));
        epilogue(&mut h, &self.conv1.bias, Some(&self.prelu), None);
        let mut y = self.conv2.conv.infer(&h);
        match &self.down {
            Some(d) => {
                let mut s = d.conv.infer(x);
                epilogue(&mut s, &d.bias, None, None);
                epilogue(&mut y, &self.conv2.bias, None, Some(&s));
            }
            None => epilogue(&mut y, &self.conv2.bias, None, Some(x)),
        }
        y
    }
}

/// An IResNet for inference: BNs folded, no dropout, nothing cached; `forward` takes `&self`
/// and may run from several threads at once.
pub struct InferenceNet {
    cfg: ResNetConfig,
    stem: BiasConv,
    prelu: Vec<f32>,
    units: Vec<InfUnit>,
    fc: Linear,
    manifest: Option<ExportManifest>,
}

impl InferenceNet {
    /// Folds `net` as it computes in eval mode (its running statistics).
    pub fn from_resnet(net: &IResNet) -> InferenceNet {
        let cfg = net.cfg.clone();
        let units = net
            .units
            .iter()
            .map(|u| {
                let (a, b) = bn_affine(&u.bn1);
                let conv1 = BiasConv::fold(&u.conv1, &u.bn2);
                let prefix = conv1.name().trim_end_matches(".conv1").to_string();
                InfUnit {
                    prefix,
                    scale: a.iter().map(|&v| v as f32).collect(),
                    shift: b.iter().map(|&v| v as f32).collect(),
                    conv1,
                    prelu: u.prelu.weight.value.data().to_vec(),
                    conv2: BiasConv::fold(&u.conv2, &u.bn3),
                    down: u.down.as_ref().map(|(c, b)| BiasConv::fold(c, b)),
                }
            })
            .collect();
        // Head: bn2 (per channel over P = H·W positions) → fc → features.
        let (a2, b2) = bn_affine(&net.bn2);
        let (af, bf) = bn_affine(&net.features);
        let w = net.fc.weight.value.data();
        let bias = net.fc.bias.value.data();
        let (dout, din) = (net.fc.weight.value.dim(0), net.fc.weight.value.dim(1));
        let p = din / a2.len();
        let mut fw = vec![0.0f32; dout * din];
        let mut fb = vec![0.0f32; dout];
        fw.par_chunks_mut(din)
            .zip(fb.par_iter_mut())
            .enumerate()
            .for_each(|(o, (row, bo))| {
                let mut acc = bias[o] as f64;
                for (k, r) in row.iter_mut().enumerate() {
                    let wv = w[o * din + k] as f64;
                    acc += wv * b2[k / p];
                    *r = (af[o] * wv * a2[k / p]) as f32;
                }
                *bo = (af[o] * acc + bf[o]) as f32;
            });
        InferenceNet {
            stem: BiasConv::fold(&net.conv1, &net.bn1),
            prelu: net.prelu.weight.value.data().to_vec(),
            units,
            fc: Linear::from_weights(
                "fc",
                Tensor::from_vec(&[dout, din], fw).expect("fc shape"),
                Tensor::from_vec(&[dout], fb).expect("fc bias shape"),
            ),
            cfg,
            manifest: None,
        }
    }

    /// The architecture with every tensor zero (shapes only; `load` fills it). `cfg` must be
    /// valid.
    fn zeros(cfg: &ResNetConfig) -> InferenceNet {
        let conv = |name: String, cin: usize, cout: usize, k: usize, stride: usize, pad: usize| BiasConv {
            conv: Conv2d::from_weight(&name, Tensor::zeros(&[cout, cin, k, k]), stride, pad),
            bias: vec![0.0; cout],
        };
        let slopes = |c: usize| match cfg.prelu {
            crate::PreluMode::PerChannel => vec![0.0; c],
            crate::PreluMode::Shared => vec![0.0; 1],
        };
        let w0 = cfg.widths[0];
        let units = cfg
            .unit_plan()
            .into_iter()
            .map(|(s, j, cin, cout, stride)| {
                let prefix = format!("layer{}.{j}", s + 1);
                InfUnit {
                    scale: vec![0.0; cin],
                    shift: vec![0.0; cin],
                    conv1: conv(format!("{prefix}.conv1"), cin, cout, 3, 1, 1),
                    prelu: slopes(cout),
                    conv2: conv(format!("{prefix}.conv2"), cout, cout, 3, stride, 1),
                    down: (stride != 1 || cin != cout)
                        .then(|| conv(format!("{prefix}.downsample.0"), cin, cout, 1, stride, 0)),
                    prefix,
                }
            })
            .collect();
        let [oh, ow] = cfg.output_size();
        let din = cfg.widths.last().expect("at least one stage") * oh * ow;
        InferenceNet {
            cfg: cfg.clone(),
            stem: conv("conv1".into(), 3, w0, 3, 1, 1),
            prelu: slopes(w0),
            units,
            fc: Linear::from_weights("fc", Tensor::zeros(&[cfg.emb_dim, din]), Tensor::zeros(&[cfg.emb_dim])),
            manifest: None,
        }
    }

    pub fn config(&self) -> &ResNetConfig {
        &self.cfg
    }

    pub fn emb_dim(&self) -> usize {
        self.cfg.emb_dim
    }

    /// The manifest it was loaded with (None when folded in memory).
    pub fn manifest(&self) -> Option<&ExportManifest> {
        self.manifest.as_ref()
    }

    /// Embeddings `[N, emb_dim]` of a batch `[N, 3, H, W]` (normalised as lsc-data does).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let [h, w] = self.cfg.input_size;
        assert!(
            x.shape().len() == 4 && x.shape()[1..] == [3, h, w],
            "InferenceNet: expected input [N, 3, {h}, {w}], got {:?}",
            x.shape()
        );
        let mut t = self.stem.conv.infer(x);
        epilogue(&mut t, &self.stem.bias, Some(&self.prelu), None);
        for u in &self.units {
            t = u.forward(&t);
        }
        let n = t.dim(0);
        let flat = t.numel() / n.max(1);
        self.fc
            .infer(&t.reshape(&[n, flat]).expect("flatten keeps the element count"))
    }

    /// Every tensor, by its name in `model.safetensors`.
    pub fn tensors(&self) -> Vec<NamedTensor> {
        let mut out = Vec::new();
        self.stem.tensors(&mut out);
        out.push(NamedTensor::f32(
            "prelu.weight",
            &[self.prelu.len()],
            self.prelu.clone(),
        ));
        for u in &self.units {
            let c = u.scale.len();
            out.push(NamedTensor::f32(
                format!("{}.bn1.scale", u.prefix),
                &[c],
                u.scale.clone(),
            ));
            out.push(NamedTensor::f32(
                format!("{}.bn1.shift", u.prefix),
                &[c],
                u.shift.clone(),
            ));
            u.conv1.tensors(&mut out);
            out.push(NamedTensor::f32(
                format!("{}.prelu.weight", u.prefix),
                &[u.prelu.len()],
                u.prelu.clone(),
            ));
            u.conv2.tensors(&mut out);
            if let Some(d) = &u.down {
                d.tensors(&mut out);
            }
        }
        let (w, b) = (&self.fc.weight.value, &self.fc.bias.value);
        out.push(NamedTensor::f32("fc.weight", w.shape(), w.data().to_vec()));
        out.push(NamedTensor::f32("fc.bias", b.shape(), b.data().to_vec()));
        out
    }

    /// Number of stored scalars.
    pub fn num_params(&self) -> usize {
        self.tensors().iter().map(|t| t.shape.iter().product::<usize>()).sum()
    }

    /// Writes the model directory `dir` (see the module docs) and returns its manifest. The
    /// files go to a temporary directory beside `dir`, renamed into place when complete; an
    /// existing `dir` is an error unless `overwrite`.
    pub fn save(
        &self,
        dir: &Path,
        source_checkpoint: &str,
        source_step: u64,
        overwrite: bool,
    ) -> Result<ExportManifest, ExportError> {
        let name = dir
            .file_name()
            .ok_or_else(|| invalid(dir, "needs a directory name"))?
            .to_string_lossy()
            .into_owned();
        if dir.exists() && !overwrite {
            return Err(invalid(dir, "already exists (remove it, or overwrite it with --force)"));
        }
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        let tmp = parent.join(format!(".tmp-{name}"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir(&tmp).map_err(io(&tmp))?;
        let meta: BTreeMap<String, String> = [("format".to_string(), FORMAT.to_string())].into();
        let (bytes, hash) = lsc_ckpt::write_safetensors(&tmp.join(WEIGHTS), &self.tensors(), &meta)?;
        let [h, w] = self.cfg.input_size;
        let m = ExportManifest {
            format: FORMAT.into(),
            version: VERSION,
            input_shape: [3, h, w],
            mean: PIXEL_MEAN,
            std: PIXEL_STD,
            emb_dim: self.cfg.emb_dim,
            l2_normalized: false,
            bn_folded: true,
            source_checkpoint: source_checkpoint.to_string(),
            source_step,
            weights: FileEntry {
                name: WEIGHTS.into(),
                bytes,
                hash,
            },
            model: self.cfg.clone(),
        };
        let mpath = tmp.join(MANIFEST);
        let text = toml::to_string(&m).map_err(|e| invalid(&mpath, e.to_string()))?;
        std::fs::write(&mpath, text).map_err(io(&mpath))?;
        for p in [&mpath, &tmp] {
            std::fs::File::open(p).and_then(|f| f.sync_all()).map_err(io(p))?;
        }
        if dir.exists() {
            // Overwriting: move the old one aside so the final name always holds a whole model.
            let old = parent.join(format!(".old-{name}"));
            let _ = std::fs::remove_dir_all(&old);
            std::fs::rename(dir, &old).map_err(io(dir))?;
            std::fs::rename(&tmp, dir).map_err(io(dir))?;
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        } else {
            std::fs::rename(&tmp, dir).map_err(io(dir))?;
        }
        std::fs::File::open(&parent)
            .and_then(|f| f.sync_all())
            .map_err(io(&parent))?;
        Ok(m)
    }

    /// Loads an exported model directory, checking the weights' size and hash and every
    /// tensor's name and shape against the manifest's architecture.
    pub fn load(dir: &Path) -> Result<InferenceNet, ExportError> {
        let m = ExportManifest::read(dir)?;
        let wpath = dir.join(&m.weights.name);
        let (bytes, hash) = lsc_ckpt::hash_file(&wpath)?;
        if bytes != m.weights.bytes || hash != m.weights.hash {
            return Err(invalid(
                &wpath,
                format!(
                    "checksum mismatch: {bytes} bytes with hash {hash}, the manifest says {} bytes with hash {}",
                    m.weights.bytes, m.weights.hash
                ),
            ));
        }
        let (mut tensors, _) = lsc_ckpt::read_safetensors(&wpath)?;
        // The shapes come from the architecture: fold a fresh net, then replace its tensors.
        let mut net = InferenceNet::zeros(&m.model);
        let mut bad = Vec::new();
        let mut take = |name: &str, shape: &[usize], dst: &mut [f32]| match tensors.remove(name) {
            Some(NamedTensor {
                shape: s,
                data: Data::F32(v),
                ..
            }) if s == shape => dst.copy_from_slice(&v),
            Some(t) => bad.push(format!("{name}: {:?} in the file, {shape:?} expected (f32)", t.shape)),
            None => bad.push(format!("{name}: not in the file")),
        };
        let bias_conv = |c: &mut BiasConv, take: &mut Take| {
            let n = c.name().to_string();
            let s = c.conv.weight.value.shape().to_vec();
            take(&format!("{n}.weight"), &s, c.conv.weight.value.data_mut());
            let len = c.bias.len();
            take(&format!("{n}.bias"), &[len], &mut c.bias);
        };
        bias_conv(&mut net.stem, &mut take);
        let len = net.prelu.len();
        take("prelu.weight", &[len], &mut net.prelu);
        for u in &mut net.units {
            let c = u.scale.len();
            take(&format!("{}.bn1.scale", u.prefix), &[c], &mut u.scale);
            take(&format!("{}.bn1.shift", u.prefix), &[c], &mut u.shift);
            bias_conv(&mut u.conv1, &mut take);
            let len = u.prelu.len();
            take(&format!("{}.prelu.weight", u.prefix), &[len], &mut u.prelu);
            bias_conv(&mut u.conv2, &mut take);
            if let Some(d) = &mut u.down {
                bias_conv(d, &mut take);
            }
        }
        let s = net.fc.weight.value.shape().to_vec();
        take("fc.weight", &s, net.fc.weight.value.data_mut());
        let s = net.fc.bias.value.shape().to_vec();
        take("fc.bias", &s, net.fc.bias.value.data_mut());
        bad.extend(tensors.keys().map(|k| format!("{k}: not part of this architecture")));
        if !bad.is_empty() {
            return Err(invalid(&wpath, bad.join("; ")));
        }
        net.manifest = Some(m);
        Ok(net)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backbone, Layer, Mode, PreluMode};
    use lsc_tensor::Rng;

    /// A net whose BN statistics, affine parameters and PReLU slopes are all away from
    /// their initial values, so that folding each one matters.
    pub(crate) fn randomized(cfg: &ResNetConfig, seed: u64) -> IResNet {
        let mut net = IResNet::new(cfg, seed).unwrap();
        let mut rng = Rng::new(seed ^ 77);
        Layer::visit_params(&mut net, &mut |p| {
            if p.name.ends_with("bn1.weight")
                || p.name.ends_with("bn2.weight")
                || p.name.ends_with("bn3.weight")
                || p.name.ends_with("features.weight")
                || p.name.ends_with("downsample.1.weight")
            {
                p.value = Tensor::uniform(p.value.shape(), 0.5, 1.5, &mut rng);
            } else if p.name.ends_with(".bias") {
                p.value = Tensor::randn(p.value.shape(), 0.2, &mut rng);
            } else if p.name.ends_with("prelu.weight") {
                p.value = Tensor::uniform(p.value.shape(), 0.05, 0.5, &mut rng);
            }
        });
        Layer::visit_buffers(&mut net, &mut |name, t| {
            *t = if name.ends_with("running_mean") {
                Tensor::randn(t.shape(), 0.2, &mut rng)
            } else {
                Tensor::uniform(t.shape(), 0.5, 2.0, &mut rng)
            };
        });
        net
    }

    /// max |a − b| / max |b|.
    pub(crate) fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.shape(), b.shape());
        let d = a
            .data()
            .iter()
            .zip(b.data())
            .map(|(x, y)| (x - y).abs() as f64)
            .fold(0.0, f64::max);
        let s = b.data().iter().map(|y| y.abs() as f64).fold(0.0, f64::max);
        d / s.max(1e-30)
    }

    fn small_cfg(prelu: PreluMode) -> ResNetConfig {
        ResNetConfig {
            units: vec![1, 2, 1],
            widths: vec![4, 8, 12],
            strides: vec![2, 1, 2],
            emb_dim: 6,
            input_size: [10, 10],
            dropout: 0.4,
            prelu,
            bn_eps: 2e-5,
            bn_momentum: 0.1,
        }
    }

    #[test]
    fn folded_net_matches_the_training_graph_in_eval_mode() {
        for (prelu, seed) in [(PreluMode::PerChannel, 1), (PreluMode::Shared, 2)] {
            let mut net = randomized(&small_cfg(prelu), seed);
            let x = Tensor::randn(&[5, 3, 10, 10], 1.0, &mut Rng::new(seed));
            let want = Backbone::forward(&mut net, &x, Mode::Eval);
            let inf = InferenceNet::from_resnet(&net);
            let got = inf.forward(&x);
            let e = rel_err(&got, &want);
            assert!(e < 1e-5, "{prelu:?}: relative error {e}");
            // Folding removed every BN after a conv: 3 BNs per unit + stem + head become
            // biases; only the units' opening BNs remain (as scale/shift).
            let names: Vec<String> = inf.tensors().into_iter().map(|t| t.name).collect();
            assert!(
                names
                    .iter()
                    .all(|n| !n.contains("bn2") && !n.contains("bn3") && !n.contains("features"))
            );
            assert_eq!(names.iter().filter(|n| n.ends_with("bn1.scale")).count(), 4);
        }
    }

    #[test]
    fn folding_the_opening_bn_into_a_padded_conv_would_be_wrong() {
        // The reason bn1 of a unit is kept: a shift folded into a zero-padded conv changes the
        // border outputs. Check that the claim is real on this net (a fold test that would pass
        // either way proves nothing).
        let mut net = randomized(&small_cfg(PreluMode::PerChannel), 3);
        let x = Tensor::randn(&[2, 3, 10, 10], 1.0, &mut Rng::new(3));
        let want = Backbone::forward(&mut net, &x, Mode::Eval);
        let mut inf = InferenceNet::from_resnet(&net);
        for u in &mut inf.units {
            // Fold scale and shift into conv1 as if there were no padding.
            let w = u.conv1.conv.weight.value.data_mut();
            let (cout, cin) = (u.conv1.bias.len(), u.scale.len());
            for co in 0..cout {
                for ci in 0..cin {
                    for k in 0..9 {
                        let i = (co * cin + ci) * 9 + k;
                        u.conv1.bias[co] += w[i] * u.shift[ci];
                        w[i] *= u.scale[ci];
                    }
                }
            }
            u.scale.fill(1.0);
            u.shift.fill(0.0);
        }
        let e = rel_err(&inf.forward(&x), &want);
        assert!(e > 1e-3, "the naive fold should differ, relative error {e}");
    }

    #[test]
    fn the_loader_skeleton_has_the_folded_nets_tensors() {
        for cfg in [small_cfg(PreluMode::PerChannel), small_cfg(PreluMode::Shared)] {
            let shapes = |n: &InferenceNet| -> Vec<(String, Vec<usize>)> {
                n.tensors().into_iter().map(|t| (t.name, t.shape)).collect()
            };
            let folded = InferenceNet::from_resnet(&IResNet::new(&cfg, 0).unwrap());
            assert_eq!(shapes(&InferenceNet::zeros(&cfg)), shapes(&folded));
        }
    }

    #[test]
    fn saves_and_loads_a_model_directory() {
        let net = randomized(&small_cfg(PreluMode::Shared), 4);
        let inf = InferenceNet::from_resnet(&net);
        let root = std::env::temp_dir().join(format!("lsc-nn-export-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("model");
        let m = inf.save(&dir, "ckpt/step-000000007", 7, false).unwrap();
        assert_eq!((m.input_shape, m.emb_dim, m.source_step), ([3, 10, 10], 6, 7));
        assert!(!root.join(".tmp-model").exists());
        let back = InferenceNet::load(&dir).unwrap();
        assert_eq!(back.manifest(), Some(&m));
        let x = Tensor::randn(&[3, 3, 10, 10], 1.0, &mut Rng::new(5));
        assert_eq!(back.forward(&x), inf.forward(&x));
        // An existing directory is kept unless overwriting.
        let e = inf.save(&dir, "x", 0, false).unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        inf.save(&dir, "x", 9, true).unwrap();
        assert_eq!(InferenceNet::load(&dir).unwrap().manifest().unwrap().source_step, 9);
        // A damaged weights file is named.
        let f = dir.join(WEIGHTS);
        let mut b = std::fs::read(&f).unwrap();
        let n = b.len();
        b[n - 3] ^= 1;
        std::fs::write(&f, b).unwrap();
        let e = InferenceNet::load(&dir).err().unwrap().to_string();
        assert!(
            e.contains("model.safetensors") && e.contains("checksum mismatch"),
            "{e}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
