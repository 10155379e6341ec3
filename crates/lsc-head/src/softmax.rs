//! The sharded margin-softmax head: forward and backward in one call.

use crate::{HeadConfig, LossKind, Margin, shard_range};
use lsc_comm::{CommError, Communicator, ReduceOp};
use lsc_nn::Param;
use lsc_tensor::cpu::{Par, Trans, matmul};
use lsc_tensor::{Rng, Tensor};
use std::ops::Range;

/// Floor of the L2 norms (F.normalize's eps).
const NORM_EPS: f32 = 1e-12;

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error(transparent)]
    Comm(#[from] CommError),
    #[error("rank {rank}: label {label} of sample {index} is outside 0..{num_classes}")]
    Label {
        rank: usize,
        index: usize,
        label: u32,
        num_classes: usize,
    },
    #[error("rank {rank}: {what}: expected {expected:?}, got {got:?}")]
    Shape {
        rank: usize,
        what: &'static str,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("rank {rank}: local batch sizes differ across ranks: {sizes:?}")]
    RaggedBatch { rank: usize, sizes: Vec<u32> },
}

/// What one training step of the head produced.
#[derive(Debug)]
pub struct HeadStep {
    /// Mean loss over the global batch (the same on every rank).
    pub loss: f32,
    /// dL/d(local embeddings), `[B_local, D]`; zeros when `skipped`.
    pub d_emb: Tensor,
    /// True when a non-finite value was seen on any rank; no gradient was written.
    pub skipped: bool,
}

/// The class-sharded margin softmax. `weight` is this rank's `[shard, D]` block of the
/// `[C, D]` class matrix (PyTorch layout, as arcface_torch).
pub struct MarginSoftmax {
    cfg: HeadConfig,
    margin: Option<Margin>,
    num_classes: usize,
    emb_dim: usize,
    shard: Range<usize>,
    rank: usize,
    pub weight: Param,
    pub bias: Option<Param>,
}

/// This rank's embeddings as sent, and everyone's as gathered.
struct Gathered {
    /// Local embeddings, L2-normalised for margin losses (raw for softmax).
    xhat: Vec<f32>,
    /// Their norms (margin losses only).
    norms: Vec<f32>,
    /// All ranks' `xhat`, in rank order: `[B_g, D]`.
    all: Vec<f32>,
    /// The global batch size.
    bg: usize,
}

/// Row-wise L2 normalisation of `[rows, d]`; returns the norms (floored at NORM_EPS).
fn normalize_rows(x: &[f32], d: usize, out: &mut [f32]) -> Vec<f32> {
    let mut norms = Vec::with_capacity(x.len() / d.max(1));
    for (r, o) in x.chunks(d).zip(out.chunks_mut(d)) {
        let n = (r.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt() as f32).max(NORM_EPS);
        for (a, b) in o.iter_mut().zip(r) {
            *a = b / n;
        }
        norms.push(n);
    }
    norms
}

/// Backward of row normalisation: `dx = (dx̂ − x̂·(x̂·dx̂)) / ‖x‖`, in place on `dxhat`.
fn normalize_rows_backward(xhat: &[f32], norms: &[f32], d: usize, dxhat: &mut [f32]) {
    for ((h, g), &n) in xhat.chunks(d).zip(dxhat.chunks_mut(d)).zip(norms) {
        let dot: f64 = h.iter().zip(g.iter()).map(|(&a, &b)| a as f64 * b as f64).sum();
        for (gv, &hv) in g.iter_mut().zip(h) {
            *gv = ((*gv as f64 - hv as f64 * dot) / n as f64) as f32;
        }
    }
}

impl MarginSoftmax {
    /// The shard of rank `comm.rank()`. Row `c` of the full class matrix is drawn from its own
    /// stream of `seed`, so the initial weights do not depend on the number of ranks.
    pub fn new(
        cfg: &HeadConfig,
        num_classes: usize,
        emb_dim: usize,
        comm: &dyn Communicator,
        seed: u64,
    ) -> MarginSoftmax {
        let shard = shard_range(num_classes, comm.world_size(), comm.rank());
        let mut w = Tensor::zeros(&[shard.len(), emb_dim]);
        for (row, c) in w.data_mut().chunks_mut(emb_dim.max(1)).zip(shard.clone()) {
            let mut rng = Rng::stream(seed, c as u64);
            for v in row {
                *v = rng.normal() * cfg.init_std;
            }
        }
        let bias =
            (cfg.loss == LossKind::Softmax && cfg.bias).then(|| Param::new("head.bias", Tensor::zeros(&[shard.len()])));
        MarginSoftmax {
            cfg: cfg.clone(),
            margin: cfg.margin(),
            num_classes,
            emb_dim,
            shard,
            rank: comm.rank(),
            weight: Param::new("head.weight", w),
            bias,
        }
    }

    pub fn shard(&self) -> Range<usize> {
        self.shard.clone()
    }
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }
    pub fn config(&self) -> &HeadConfig {
        &self.cfg
    }

    pub fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
        if let Some(b) = &mut self.bias {
            f(b);
        }
    }

    fn check_emb(&self, emb: &Tensor) -> Result<usize, HeadError> {
        let b = emb.shape().first().copied().unwrap_or(0);
        if emb.shape() != [b, self.emb_dim] {
            return Err(HeadError::Shape {
                rank: self.rank,
                what: "embeddings",
                expected: vec![b, self.emb_dim],
                got: emb.shape().to_vec(),
            });
        }
        Ok(b)
    }

    /// Gathers the (normalised, for margin losses) embeddings of every rank.
    fn gather(&self, emb: &Tensor, comm: &dyn Communicator) -> Result<Gathered, HeadError> {
        let b = self.check_emb(emb)?;
        let sizes = comm.all_gather_u32(&[b as u32])?;
        if sizes.iter().any(|&s| s != b as u32) {
            return Err(HeadError::RaggedBatch { rank: self.rank, sizes });
        }
        let d = self.emb_dim;
        let mut xhat = emb.data().to_vec();
        let norms = if self.margin.is_some() {
            normalize_rows(emb.data(), d, &mut xhat)
        } else {
            Vec::new()
        };
        let mut all = vec![0.0f32; xhat.len() * comm.world_size()];
        comm.all_gather(&xhat, &mut all)?;
        Ok(Gathered {
            xhat,
            norms,
            all,
            bg: b * comm.world_size(),
        })
    }

    /// Local logits `[B_g, S]`: `s·cos` (margin not yet applied) or `X·Wᵀ + b`.
    /// Returns (logits, normalised weights and norms for margin losses).
    fn logits(&self, all: &[f32], bg: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (d, s) = (self.emb_dim, self.shard.len());
        let mut logits = vec![0.0f32; bg * s];
        let w = self.weight.value.data();
        let (what, wnorm) = match self.margin {
            Some(_) => {
                let mut wh = vec![0.0f32; w.len()];
                let n = normalize_rows(w, d, &mut wh);
                (wh, n)
            }
            None => (Vec::new(), Vec::new()),
        };
        let wm: &[f32] = if self.margin.is_some() { &what } else { w };
        matmul(Trans::N, Trans::T, bg, s, d, all, wm, &mut logits, false, Par::Rayon);
        if self.margin.is_some() {
            let sc = self.cfg.scale;
            for v in &mut logits {
                *v *= sc;
            }
        } else if let Some(b) = &self.bias {
            for row in logits.chunks_mut(s.max(1)) {
                for (v, bv) in row.iter_mut().zip(b.value.data()) {
                    *v += bv;
                }
            }
        }
        (logits, what, wnorm)
    }

    /// One training step: the global mean loss and dL/d(local embeddings); the shard's weight
    /// (and bias) gradients are added into their `Param::grad` unless the step is skipped.
    pub fn forward_backward(
        &mut self,
        emb: &Tensor,
        labels: &[u32],
        comm: &dyn Communicator,
    ) -> Result<HeadStep, HeadError> {
        let (d, s) = (self.emb_dim, self.shard.len());
        let b = self.check_emb(emb)?;
        if labels.len() != b {
            return Err(HeadError::Shape {
                rank: self.rank,
                what: "labels",
                expected: vec![b],
                got: vec![labels.len()],
            });
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| l as usize >= self.num_classes)
        {
            return Err(HeadError::Label {
                rank: self.rank,
                index: i,
                label: l,
                num_classes: self.num_classes,
            });
        }
        let Gathered { xhat, norms, all, bg } = self.gather(emb, comm)?;
        let all_labels = comm.all_gather_u32(labels)?;
        let (mut logits, what, wnorm) = self.logits(&all, bg);
        let sc = self.cfg.scale as f64;

        // Margin on the targets this shard owns; remember dφ/dcos for backward.
        let mut target = vec![usize::MAX; bg]; // local column of the target, if owned
        let mut dphi = vec![1.0f64; bg];
        for i in 0..bg {
            let l = all_labels[i] as usize;
            if self.shard.contains(&l) {
                let j = l - self.shard.start;
                target[i] = j;
                if let Some(m) = &self.margin {
                    let cos = logits[i * s + j] / self.cfg.scale;
                    let (phi, dp) = m.apply(cos);
                    logits[i * s + j] = (sc * phi) as f32;
                    dphi[i] = dp;
                }
            }
        }

        // Distributed softmax: global row max, then global row sum of exp.
        let mut gmax: Vec<f32> = (0..bg)
            .map(|i| {
                logits[i * s..(i + 1) * s]
                    .iter()
                    .copied()
                    .fold(f32::NEG_INFINITY, f32::max)
            })
            .collect();
        comm.all_reduce(&mut gmax, ReduceOp::Max)?;
        let mut den = vec![0.0f32; bg];
        for i in 0..bg {
            let m = gmax[i];
            let row = &mut logits[i * s..(i + 1) * s];
            let mut acc = 0.0f64;
            for v in row.iter_mut() {
                *v = (*v - m).exp();
                acc += *v as f64;
            }
            den[i] = acc as f32;
        }
        comm.all_reduce(&mut den, ReduceOp::Sum)?;
        // Loss: −log p_target summed over the rows this shard owns, then over ranks.
        let mut local_loss = 0.0f64;
        for i in 0..bg {
            if target[i] != usize::MAX {
                let p = logits[i * s + target[i]] as f64 / den[i] as f64;
                local_loss -= p.max(1e-30).ln();
            }
        }
        let finite_local = local_loss.is_finite()
            && den.iter().all(|v| v.is_finite() && *v > 0.0)
            && gmax.iter().all(|v| v.is_finite());
        let mut flags = [local_loss as f32, if finite_local { 0.0 } else { 1.0 }];
        comm.all_reduce(&mut flags, ReduceOp::Sum)?;
        let loss = flags[0] / bg as f32;
        if flags[1] != 0.0 || !loss.is_finite() {
            return Ok(HeadStep {
                loss,
                d_emb: Tensor::zeros(&[b, d]),
                skipped: true,
            });
        }

        // dL/dlogit = (p − onehot) / B_g, then through the scale and the margin.
        let inv_bg = 1.0 / bg as f64;
        for i in 0..bg {
            let row = &mut logits[i * s..(i + 1) * s];
            let inv = 1.0 / den[i] as f64;
            for v in row.iter_mut() {
                *v = (*v as f64 * inv * inv_bg) as f32;
            }
            if target[i] != usize::MAX {
                let j = target[i];
                row[j] = ((row[j] as f64 - inv_bg) * dphi[i]) as f32;
            }
            if self.margin.is_some() {
                for v in row.iter_mut() {
                    *v = (*v as f64 * sc) as f32;
                }
            }
        }
        let dlogit = logits; // [B_g, S], now dL/dcos (margin) or dL/dlogit (softmax)

        // Shard weight gradient: dŴ = dlogitᵀ·X, then through the weight normalisation.
        let mut dw = vec![0.0f32; s * d];
        matmul(Trans::T, Trans::N, s, d, bg, &dlogit, &all, &mut dw, false, Par::Rayon);
        if self.margin.is_some() {
            normalize_rows_backward(&what, &wnorm, d, &mut dw);
        }
        // Gathered embedding gradient dX = dlogit·Ŵ, reduce-scattered to the owners.
        let wm: &[f32] = if self.margin.is_some() {
            &what
        } else {
            self.weight.value.data()
        };
        let mut dall = vec![0.0f32; bg * d];
        matmul(Trans::N, Trans::N, bg, d, s, &dlogit, wm, &mut dall, false, Par::Rayon);
        let mut dx = vec![0.0f32; b * d];
        comm.reduce_scatter(&dall, &mut dx, ReduceOp::Sum)?;
        if self.margin.is_some() {
            normalize_rows_backward(&xhat, &norms, d, &mut dx);
        }

        for (g, v) in self.weight.grad.data_mut().iter_mut().zip(&dw) {
            *g += v;
        }
        if let Some(bp) = &mut self.bias {
            for row in dlogit.chunks(s.max(1)) {
                for (g, v) in bp.grad.data_mut().iter_mut().zip(row) {
                    *g += v;
                }
            }
        }
        Ok(HeadStep {
            loss,
            d_emb: Tensor::from_vec(&[b, d], dx).expect("b×d"),
            skipped: false,
        })
    }

    /// The predicted class of each local embedding: arg-max cosine (margin losses) or logit
    /// (softmax) over all classes of all shards. Ties go to the lowest class index.
    pub fn predict(&self, emb: &Tensor, comm: &dyn Communicator) -> Result<Vec<u32>, HeadError> {
        let Gathered { all, bg, .. } = self.gather(emb, comm)?;
        let b = bg / comm.world_size();
        let s = self.shard.len();
        let (logits, _, _) = self.logits(&all, bg);
        // Per row: (best value, best global class) of this shard, as f32 bit patterns.
        let mut best = vec![0.0f32; 2 * bg];
        for i in 0..bg {
            let (mut bv, mut bj) = (f32::NEG_INFINITY, u32::MAX);
            for (j, &v) in logits[i * s..(i + 1) * s].iter().enumerate() {
                if v > bv {
                    bv = v;
                    bj = (self.shard.start + j) as u32;
                }
            }
            best[2 * i] = bv;
            best[2 * i + 1] = f32::from_bits(bj);
        }
        let mut gathered = vec![0.0f32; best.len() * comm.world_size()];
        comm.all_gather(&best, &mut gathered)?;
        let r = comm.rank();
        Ok((r * b..(r + 1) * b)
            .map(|i| {
                let (mut bv, mut bj) = (f32::NEG_INFINITY, u32::MAX);
                for k in 0..comm.world_size() {
                    let v = gathered[k * 2 * bg + 2 * i];
                    let j = gathered[k * 2 * bg + 2 * i + 1].to_bits();
                    if v > bv || (v == bv && j < bj) {
                        bv = v;
                        bj = j;
                    }
                }
                bj
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lsc_comm::LocalComm;
    use lsc_nn::gradcheck::{CheckOptions, check_grad};

    fn setup(loss: LossKind, c: usize, d: usize, b: usize, seed: u64) -> (MarginSoftmax, Tensor, Vec<u32>) {
        let mut cfg = HeadConfig::new(loss);
        cfg.init_std = 0.5;
        cfg.scale = 8.0; // a small scale keeps the loss smooth for finite differences
        let head = MarginSoftmax::new(&cfg, c, d, &LocalComm, seed);
        let mut rng = Rng::new(seed + 100);
        let emb = Tensor::randn(&[b, d], 1.0, &mut rng);
        let labels = (0..b).map(|i| (i * 7 % c) as u32).collect();
        (head, emb, labels)
    }

    fn loss_of(head: &mut MarginSoftmax, emb: &Tensor, labels: &[u32]) -> f64 {
        let step = head.forward_backward(emb, labels, &LocalComm).unwrap();
        head.visit_params(&mut |p| p.grad.fill_zero());
        step.loss as f64
    }

    #[test]
    fn gradients_match_finite_differences_for_every_loss() {
        let mut cfgs = vec![
            LossKind::Softmax,
            LossKind::ArcFace,
            LossKind::CosFace,
            LossKind::Combined,
        ];
        cfgs.dedup();
        for loss in cfgs {
            let (mut head, emb, labels) = setup(loss, 7, 5, 6, 1);
            if let Some(b) = &mut head.bias {
                b.value = Tensor::randn(&[7], 0.5, &mut Rng::new(3));
            }
            let step = head.forward_backward(&emb, &labels, &LocalComm).unwrap();
            assert!(!step.skipped);
            let dw = head.weight.grad.data().to_vec();
            let db = head.bias.as_ref().map(|b| b.grad.data().to_vec());
            head.visit_params(&mut |p| p.grad.fill_zero());
            let opts = CheckOptions {
                eps: 5e-3,
                atol: 3e-4,
                rtol: 1e-2,
                max_checks: 40,
                seed: 2,
            };
            let mut rng = Rng::new(4);
            let mut x = emb.data().to_vec();
            check_grad(
                &format!("{loss:?} emb"),
                &mut x,
                step.d_emb.data(),
                &mut |v| {
                    let t = Tensor::from_vec(emb.shape(), v.to_vec()).unwrap();
                    loss_of(&mut head, &t, &labels)
                },
                &opts,
                &mut rng,
            )
            .unwrap();
            let mut w = head.weight.value.data().to_vec();
            check_grad(
                &format!("{loss:?} weight"),
                &mut w,
                &dw,
                &mut |v| {
                    head.weight.value.data_mut().copy_from_slice(v);
                    loss_of(&mut head, &emb, &labels)
                },
                &opts,
                &mut rng,
            )
            .unwrap();
            head.weight.value.data_mut().copy_from_slice(&w);
            if let Some(db) = db {
                let mut bv = head.bias.as_ref().unwrap().value.data().to_vec();
                check_grad(
                    "bias",
                    &mut bv,
                    &db,
                    &mut |v| {
                        head.bias.as_mut().unwrap().value.data_mut().copy_from_slice(v);
                        loss_of(&mut head, &emb, &labels)
                    },
                    &opts,
                    &mut rng,
                )
                .unwrap();
            }
        }
    }

    #[test]
    fn zero_margin_equals_plain_cosine_softmax() {
        let (mut a, emb, labels) = setup(LossKind::ArcFace, 9, 4, 5, 2);
        a.margin = Some(Margin {
            m2: 0.0,
            ..a.margin.unwrap()
        });
        let la = a.forward_backward(&emb, &labels, &LocalComm).unwrap().loss as f64;
        // Reference: s·cos logits, log-softmax, mean, in f64.
        let d = 4;
        let s = a.cfg.scale as f64;
        let w = a.weight.value.data();
        let mut total = 0.0;
        for (i, &l) in labels.iter().enumerate() {
            let x = &emb.data()[i * d..(i + 1) * d];
            let xn: f64 = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
            let logits: Vec<f64> = (0..9)
                .map(|c| {
                    let r = &w[c * d..(c + 1) * d];
                    let rn: f64 = r.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
                    s * x.iter().zip(r).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / (xn * rn)
                })
                .collect();
            let m = logits.iter().cloned().fold(f64::MIN, f64::max);
            let lse = m + logits.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            total += lse - logits[l as usize];
        }
        assert!((la - total / 5.0).abs() < 1e-4, "{la} vs {}", total / 5.0);
    }

    #[test]
    fn no_nan_when_cos_is_exactly_one() {
        let cfg = HeadConfig::new(LossKind::ArcFace);
        let mut head = MarginSoftmax::new(&cfg, 3, 4, &LocalComm, 0);
        // Embeddings equal to their class rows (cos = 1) and to the negated row (cos = −1).
        let w = head.weight.value.data().to_vec();
        let mut e = w[0..4].to_vec();
        e.extend(w[4..8].iter().map(|v| -v));
        let emb = Tensor::from_vec(&[2, 4], e).unwrap();
        let step = head.forward_backward(&emb, &[0, 1], &LocalComm).unwrap();
        assert!(!step.skipped && step.loss.is_finite());
        assert!(step.d_emb.all_finite() && head.weight.grad.all_finite());
    }

    #[test]
    fn non_finite_input_skips_without_writing() {
        let (mut head, mut emb, labels) = setup(LossKind::ArcFace, 5, 3, 4, 3);
        emb.data_mut()[2] = f32::NAN;
        let step = head.forward_backward(&emb, &labels, &LocalComm).unwrap();
        assert!(step.skipped);
        assert!(head.weight.grad.data().iter().all(|&g| g == 0.0));
    }

    #[test]
    fn bad_labels_and_shapes_are_named() {
        let (mut head, emb, _) = setup(LossKind::CosFace, 5, 3, 4, 4);
        let e = head
            .forward_backward(&emb, &[0, 1, 9, 2], &LocalComm)
            .unwrap_err()
            .to_string();
        assert!(e.contains("label 9 of sample 2") && e.contains("0..5"), "{e}");
        let e = head
            .forward_backward(&Tensor::zeros(&[4, 2]), &[0; 4], &LocalComm)
            .unwrap_err()
            .to_string();
        assert!(e.contains("embeddings"), "{e}");
    }

    #[test]
    fn predict_picks_the_nearest_class() {
        let cfg = HeadConfig::new(LossKind::ArcFace);
        let head = MarginSoftmax::new(&cfg, 6, 8, &LocalComm, 5);
        let w = head.weight.value.data();
        let order = [3usize, 0, 5];
        let e: Vec<f32> = order
            .iter()
            .flat_map(|&c| w[c * 8..(c + 1) * 8].iter().map(|v| v * 3.0))
            .collect();
        let emb = Tensor::from_vec(&[3, 8], e).unwrap();
        assert_eq!(head.predict(&emb, &LocalComm).unwrap(), vec![3, 0, 5]);
    }
}
