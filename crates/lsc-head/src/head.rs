//! The sharded margin-softmax head: a fused, tiled CPU kernel and its plain reference.
//!
//! Fused step, per rank, over the selected rows of its class shard in tiles of `tile` classes
//! (tiles run in parallel, one thread each, with single-threaded GEMMs):
//! - pass 1: each tile's rows `R` are multiplied, as stored (borrowed from an f32 store, or
//!   gathered/widened), with the gathered embeddings into class-major `[tile, B]` logits; for
//!   margin losses the row normalisation and the scale are one factor `s/‖w‖` per class. The
//!   margin is applied to the targets, and a running row max and sum of exponentials is kept
//!   (online softmax); max and sum are then all-reduced;
//! - the loss and a non-finite check are agreed on by all ranks: a non-finite value skips the
//!   step before anything is written;
//! - pass 2: each tile's logits are recomputed, turned into `(p − onehot)/B` and pushed back
//!   through the margin and the per-class factor; the tile adds its share of dL/dX̂ and
//!   applies SGD (momentum, weight decay) to its own rows in place, the gradient of each row
//!   formed on the fly.
//!
//! Neither the `[C, D]` weight gradient nor the `[B, C]` logits are ever stored: extra memory is
//! O(B·tile + tile·D) per thread plus O(B·D). [`MarginSoftmax::reference_gradients`] is the
//! plain version (all logits in memory, full dW, no code shared with the tiles) the fused
//! kernel is tested against.

use crate::sample::select;
use crate::store::{RowSource, RowWriter, Rows, prefetch};
use crate::{HeadConfig, LossKind, Margin, shard_range};
use lsc_comm::{CommError, Communicator, ReduceOp};
use lsc_tensor::cpu::par::ordered_fold;
use lsc_tensor::cpu::{Par, Trans, math, matmul};
use lsc_tensor::{Rng, Tensor};
use rayon::prelude::*;
use std::cell::RefCell;
use std::ops::Range;
use std::sync::Mutex;

/// Floor of the L2 norms (F.normalize's eps).
const NORM_EPS: f32 = 1e-12;
/// A row whose target is not a selected class of this shard.
const NONE: u32 = u32::MAX;

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

/// What one step of the head produced.
#[derive(Debug)]
pub struct HeadStep {
    /// Mean loss over the global batch (the same on every rank).
    pub loss: f32,
    /// dL/d(local embeddings), `[B_local, D]`; zeros when `skipped`.
    pub d_emb: Tensor,
    /// True when a non-finite value was seen on any rank; nothing was written.
    pub skipped: bool,
    /// Class rows this rank computed (all of its shard unless Partial FC samples).
    pub rows: usize,
}

/// SGD applied to the head's rows in place (PyTorch's rule: `v = μv + g + wd·w`, `w −= lr·v`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Update {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
}

/// The full gradients of one step (tests and tools; training uses the fused update).
#[derive(Debug)]
pub struct Gradients {
    pub step: HeadStep,
    /// `[shard, D]`; rows Partial FC did not select are zero.
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

/// The class-sharded margin softmax of one rank.
pub struct MarginSoftmax {
    cfg: HeadConfig,
    margin: Option<Margin>,
    num_classes: usize,
    emb_dim: usize,
    shard: Range<usize>,
    rank: usize,
    weight: Rows,
    momentum: Rows,
    bias: Option<Vec<f32>>,
    bias_momentum: Option<Vec<f32>>,
    seed: u64,
    steps: u64,
}

/// This rank's inputs after the all-gathers.
struct Prepared {
    /// Local embeddings, L2-normalised for margin losses (raw for softmax).
    xhat: Vec<f32>,
    norms: Vec<f32>,
    /// All ranks' `xhat` in rank order, `[bg, D]`.
    all: Vec<f32>,
    /// `all` transposed, `[D, bg]`, the right operand of the class-major logits product.
    all_t: Vec<f32>,
    labels: Vec<u32>,
    b: usize,
    bg: usize,
}

/// Scratch of one tile of `n` classes. Everything is class-major, so that the products run
/// on the stored rows `R` themselves (`[n, D]`, no copy for a contiguous f32 tile) in the gemm
/// crate's fast layouts (`cargo bench --bench fc`, `tile_gemm_gflops`). Margin losses use
/// `s·ŵ = diag(f)·R` with `f = s/‖w‖`, so the normalisation is a per-class scale of the
/// `[n, bg]` logits and of their gradient, never a normalised copy of the rows.
#[derive(Default)]
struct Tile {
    /// ‖w‖ per class (floored), margin losses only.
    norms: Vec<f32>,
    /// `s/‖w‖` per class, margin losses only.
    scale: Vec<f32>,
    /// `[n, bg]` logits, then dL/dlogit, then (margin) `diag(f)·dL/dlogit`.
    logits: Vec<f32>,
    /// `[n, D]`: `diag(f)·dL/dlogit · X̂` (margin) or dL/dW (softmax).
    du: Vec<f32>,
}

thread_local! {
    /// Each thread's tile scratch and gathered rows, kept from tile to tile and from step to
    /// step: fresh buffers per chunk cost page faults (a fifth of a Partial FC step at 1M
    /// classes). Borrowed for one tile at a time; nothing inside a tile re-enters rayon.
    static SCRATCH: RefCell<(Tile, Vec<f32>)> = RefCell::new((Tile::default(), Vec::new()));
}

fn with_scratch<R>(f: impl FnOnce(&mut Tile, &mut Vec<f32>) -> R) -> R {
    SCRATCH.with_borrow_mut(|(t, raw)| f(t, raw))
}

/// The rows `R` of a tile: borrowed from an f32 store when they are consecutive, else read
/// into `raw` (widened from bf16).
///
/// # Safety
/// No other thread writes these rows while the returned slice is alive.
unsafe fn tile_rows<'s>(src: &'s dyn RowSource, rows: &[u32], d: usize, raw: &'s mut Vec<f32>) -> &'s [f32] {
    let n = rows.len();
    if let (Some(&a), Some(&b)) = (rows.first(), rows.last())
        && (b - a) as usize + 1 == n
        // SAFETY: forwarded to the caller.
        && let Some(block) = unsafe { src.f32_block(a as usize..b as usize + 1) }
    {
        return block;
    }
    raw.resize(n * d, 0.0);
    for (k, (&r, out)) in rows.iter().zip(raw.chunks_mut(d.max(1))).enumerate() {
        if let Some(&ahead) = rows.get(k + PREFETCH_ROWS) {
            src.prefetch_row(ahead as usize);
        }
        // SAFETY: forwarded to the caller; the row is copied out at once.
        unsafe { src.copy_row(r as usize, out) };
    }
    raw
}

/// Rows a pass prefetches ahead of the one it is reading (a row of 512 f32 is 2 KiB).
const PREFETCH_ROWS: usize = 4;
/// Softmax sums are kept in f32 for this many class rows, then added into f64.
const SUM_BLOCK: usize = 64;

/// `dst[c * rows + r] = src[r * cols + c]`, in cache-sized blocks.
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const B: usize = 16;
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
}

/// Row-wise L2 normalisation of `[rows, d]` into `out`; returns the norms (floored).
fn normalize_rows(x: &[f32], d: usize, out: &mut [f32]) -> Vec<f32> {
    let mut norms = Vec::with_capacity(x.len() / d.max(1));
    for (r, o) in x.chunks(d.max(1)).zip(out.chunks_mut(d.max(1))) {
        let n = math::dot(r, r).sqrt().max(NORM_EPS);
        let inv = 1.0 / n;
        for (a, b) in o.iter_mut().zip(r) {
            *a = b * inv;
        }
        norms.push(n);
    }
    norms
}

/// Backward of row normalisation: `g ← (g − x̂·(x̂·g)) / ‖x‖`, in place.
fn normalize_rows_backward(xhat: &[f32], norms: &[f32], d: usize, g: &mut [f32]) {
    for ((h, gr), &n) in xhat.chunks(d.max(1)).zip(g.chunks_mut(d.max(1))).zip(norms) {
        let dot = math::dot(h, gr);
        let inv = 1.0 / n;
        for (gv, &hv) in gr.iter_mut().zip(h) {
            *gv = (*gv - hv * dot) * inv;
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
        let start = shard.start;
        let weight = Rows::from_fill(shard.len(), emb_dim, cfg.dtype, |rows, out| {
            out.par_chunks_mut(emb_dim.max(1)).enumerate().for_each(|(k, row)| {
                let mut rng = Rng::stream(seed, (start + rows.start + k) as u64);
                for v in row {
                    *v = rng.normal() * cfg.init_std;
                }
            });
            Ok::<(), std::convert::Infallible>(())
        })
        .unwrap_or_else(|e| match e {});
        let softmax_bias = cfg.loss == LossKind::Softmax && cfg.bias;
        MarginSoftmax {
            cfg: cfg.clone(),
            margin: cfg.margin(),
            num_classes,
            emb_dim,
            weight,
            momentum: Rows::zeros(shard.len(), emb_dim, cfg.dtype),
            bias: softmax_bias.then(|| vec![0.0; shard.len()]),
            bias_momentum: softmax_bias.then(|| vec![0.0; shard.len()]),
            shard,
            rank: comm.rank(),
            seed,
            steps: 0,
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
    /// This shard's weights `[shard, D]` as f32.
    pub fn weights(&self) -> Vec<f32> {
        self.weight.to_f32()
    }
    /// Replaces this shard's weights (`[shard, D]`, f32; stored in the configured dtype).
    pub fn set_weights(&mut self, w: Vec<f32>) {
        assert_eq!(
            w.len(),
            self.shard.len() * self.emb_dim,
            "head weights: shard {:?} × {}",
            self.shard,
            self.emb_dim
        );
        self.weight = Rows::from_f32(w, self.emb_dim, self.cfg.dtype);
    }
    pub fn momentum(&self) -> Vec<f32> {
        self.momentum.to_f32()
    }
    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }
    pub fn bias_momentum(&self) -> Option<&[f32]> {
        self.bias_momentum.as_deref()
    }

    /// Restores a saved state of this shard (`[shard, D]` weights and momentum as f32, the
    /// bias and its momentum for softmax, and the step counter). Checks every length.
    pub fn restore(
        &mut self,
        weights: Vec<f32>,
        momentum: Vec<f32>,
        bias: Option<(Vec<f32>, Vec<f32>)>,
        steps: u64,
    ) -> Result<(), String> {
        let (d, dt) = (self.emb_dim, self.cfg.dtype);
        self.restore_rows(
            Rows::from_f32(weights, d, dt),
            Rows::from_f32(momentum, d, dt),
            bias,
            steps,
        )
    }

    /// [`MarginSoftmax::restore`] from stores already built (see [`Rows::from_fill`]), in this
    /// head's dtype. Checks every length.
    pub fn restore_rows(
        &mut self,
        weight: Rows,
        momentum: Rows,
        bias: Option<(Vec<f32>, Vec<f32>)>,
        steps: u64,
    ) -> Result<(), String> {
        let n = self.shard.len();
        let ok = |r: &Rows| r.dim() == self.emb_dim && r.rows() == n && r.dtype() == self.cfg.dtype;
        if !ok(&weight) || !ok(&momentum) {
            return Err(format!(
                "head shard {:?} × {} needs {n} rows of weights and momenta in {:?}, got {} and {}",
                self.shard,
                self.emb_dim,
                self.cfg.dtype,
                weight.rows(),
                momentum.rows()
            ));
        }
        match (&self.bias, bias) {
            (Some(_), Some((b, bm))) if b.len() == n && bm.len() == n => {
                self.bias = Some(b);
                self.bias_momentum = Some(bm);
            }
            (None, None) => {}
            (has, got) => {
                return Err(format!(
                    "head bias: this config {} one, the checkpoint {}",
                    if has.is_some() { "has" } else { "has no" },
                    if got.is_some() {
                        "has one (or the wrong size)"
                    } else {
                        "has none"
                    }
                ));
            }
        }
        self.weight = weight;
        self.momentum = momentum;
        self.steps = steps;
        Ok(())
    }

    /// Frees this shard's weights and momentum ahead of a [`MarginSoftmax::restore_rows`], so
    /// that loading a checkpoint never holds the old and the new store at once. The head is
    /// unusable until restored.
    pub fn release_storage(&mut self) {
        self.weight = Rows::zeros(0, self.emb_dim, self.cfg.dtype);
        self.momentum = Rows::zeros(0, self.emb_dim, self.cfg.dtype);
    }

    /// The stored weights and momentum of this shard.
    pub fn weight_rows(&self) -> &Rows {
        &self.weight
    }
    pub fn momentum_rows(&self) -> &Rows {
        &self.momentum
    }

    pub fn state_bytes(&self) -> usize {
        self.weight.bytes() + self.momentum.bytes() + self.bias.as_ref().map_or(0, |b| 8 * b.len())
    }
    /// Steps taken so far (seeds Partial FC sampling and stochastic rounding).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    fn prepare(&self, emb: &Tensor, labels: &[u32], comm: &dyn Communicator) -> Result<Prepared, HeadError> {
        let d = self.emb_dim;
        let b = emb.shape().first().copied().unwrap_or(0);
        if emb.shape() != [b, d] {
            return Err(HeadError::Shape {
                rank: self.rank,
                what: "embeddings",
                expected: vec![b, d],
                got: emb.shape().to_vec(),
            });
        }
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
        let sizes = comm.all_gather_u32(&[b as u32])?;
        if sizes.iter().any(|&s| s != b as u32) {
            return Err(HeadError::RaggedBatch { rank: self.rank, sizes });
        }
        let mut xhat = emb.data().to_vec();
        let norms = if self.margin.is_some() {
            normalize_rows(emb.data(), d, &mut xhat)
        } else {
            Vec::new()
        };
        let bg = b * comm.world_size();
        let mut all = vec![0.0f32; xhat.len() * comm.world_size()];
        comm.all_gather(&xhat, &mut all)?;
        let mut all_t = vec![0.0f32; all.len()];
        transpose(&all, bg, d, &mut all_t);
        let labels = comm.all_gather_u32(labels)?;
        Ok(Prepared {
            xhat,
            norms,
            all,
            all_t,
            labels,
            b,
            bg,
        })
    }

    /// The rows this step computes and, per global row, the position of its target in them.
    fn selection(&self, labels: &[u32]) -> (Vec<u32>, Vec<u32>) {
        let mut rng = Rng::stream(self.seed ^ 0x5a3d_17e5, self.steps * 4096 + self.rank as u64);
        let sel = select(&self.shard, labels, self.cfg.sample_rate, &mut rng);
        let target = labels
            .iter()
            .map(|&l| {
                let l = l as usize;
                if self.shard.contains(&l) {
                    let local = (l - self.shard.start) as u32;
                    sel.binary_search(&local).map_or(NONE, |p| p as u32)
                } else {
                    NONE
                }
            })
            .collect();
        (sel, target)
    }

    /// The class-major logits `[rows.len(), bg]` of the tile rows `w` (see [`tile_rows`]) into
    /// `t`: `s·cos` with no margin yet, or `w·x + b` for softmax.
    fn tile_logits(&self, w: &[f32], bias: Option<&[f32]>, rows: &[u32], p: &Prepared, t: &mut Tile) {
        let (d, n, bg) = (self.emb_dim, rows.len(), p.bg);
        t.norms.clear();
        t.scale.clear();
        if self.margin.is_some() {
            // The norms first: this pass streams the rows into cache (prefetching ahead) for
            // the product that follows.
            for (k, row) in w.chunks(d.max(1)).enumerate() {
                if let Some(ahead) = w.get((k + PREFETCH_ROWS) * d..) {
                    prefetch(ahead.as_ptr().cast(), d.min(ahead.len()) * 4);
                }
                let norm = math::dot_wide(row, row).sqrt().max(NORM_EPS);
                t.norms.push(norm);
                t.scale.push(self.cfg.scale / norm);
            }
        }
        t.logits.resize(n * bg, 0.0);
        matmul(
            Trans::N,
            Trans::N,
            n,
            bg,
            d,
            w,
            &p.all_t,
            &mut t.logits,
            false,
            Par::Seq,
        );
        if self.margin.is_some() {
            for (z, &f) in t.logits.chunks_mut(bg.max(1)).zip(&t.scale) {
                for v in z.iter_mut() {
                    *v *= f;
                }
            }
        } else if let Some(b) = bias {
            for (z, &r) in t.logits.chunks_mut(bg.max(1)).zip(rows) {
                let bv = b[r as usize];
                for v in z.iter_mut() {
                    *v += bv;
                }
            }
        }
    }

    /// Applies the margin to the targets inside tile positions `[t0, t0 + n)` of class-major
    /// `[n, bg]` logits; returns `(row, column in tile, dφ/dcos)` for each.
    fn apply_margin(&self, target: &[u32], t0: usize, n: usize, logits: &mut [f32]) -> Vec<(usize, usize, f32)> {
        let bg = target.len();
        let mut hits = Vec::new();
        for (i, &pos) in target.iter().enumerate() {
            let pos = pos as usize;
            if pos != NONE as usize && pos >= t0 && pos < t0 + n {
                let j = pos - t0;
                let mut dphi = 1.0;
                if let Some(m) = &self.margin {
                    let v = &mut logits[j * bg + i];
                    let (phi, dp) = m.apply(*v / self.cfg.scale);
                    *v = (self.cfg.scale as f64 * phi) as f32;
                    dphi = dp as f32;
                }
                hits.push((i, j, dphi));
            }
        }
        hits
    }

    /// The tiles of the selection, as position ranges.
    fn tiles(&self, n: usize) -> Vec<Range<usize>> {
        let t = self.cfg.tile.max(1);
        (0..n.div_ceil(t)).map(|k| k * t..((k + 1) * t).min(n)).collect()
    }

    /// Pass 1 and the all-reduces: global row max, softmax denominators, loss, finiteness.
    fn forward_stats(
        &self,
        src: &dyn RowSource,
        sel: &[u32],
        target: &[u32],
        p: &Prepared,
        comm: &dyn Communicator,
    ) -> Result<Stats, HeadError> {
        let bias = self.bias.as_deref();
        let bg = p.bg;
        // Per chunk of tiles: running max, sum of e^(z − max) in f64, target logits, and the
        // tile's max and f32 block sums (the tile itself is the thread's scratch).
        let init = || {
            (
                vec![f32::NEG_INFINITY; bg],
                vec![0.0f64; bg],
                vec![f32::NAN; bg],
                (vec![0.0f32; bg], vec![0.0f32; bg]),
            )
        };
        let tiles = self.tiles(sel.len());
        let (m, l, tgt, _) = ordered_fold(
            tiles.len(),
            init,
            |(mut m, mut l, mut tgt, (mut mx, mut acc)), k| {
                with_scratch(|t, raw| {
                    let r = tiles[k].clone();
                    let n = r.len();
                    // SAFETY: pass 1 writes no row.
                    let w = unsafe { tile_rows(src, &sel[r.clone()], self.emb_dim, raw) };
                    self.tile_logits(w, bias, &sel[r.clone()], p, t);
                    for (i, j, _) in self.apply_margin(target, r.start, n, &mut t.logits) {
                        tgt[i] = t.logits[j * bg + i];
                    }
                    mx.copy_from_slice(&m);
                    for row in t.logits.chunks_exact(bg.max(1)) {
                        math::max_into(&mut mx, row);
                    }
                    for i in 0..bg {
                        if m[i] != f32::NEG_INFINITY {
                            l[i] *= ((m[i] - mx[i]) as f64).exp();
                        }
                    }
                    for block in t.logits.chunks(SUM_BLOCK * bg.max(1)) {
                        acc.fill(0.0);
                        for row in block.chunks_exact(bg.max(1)) {
                            math::exp_sub_acc(row, &mx, &mut acc);
                        }
                        for (li, &a) in l.iter_mut().zip(&acc) {
                            *li += a as f64;
                        }
                    }
                    m.copy_from_slice(&mx);
                });
                (m, l, tgt, (mx, acc))
            },
            |(mut m, mut l, mut tg, w), (m2, l2, t2, _)| {
                for i in 0..bg {
                    let mn = m[i].max(m2[i]);
                    let f = |mk: f32| {
                        if mk == f32::NEG_INFINITY {
                            0.0
                        } else {
                            ((mk - mn) as f64).exp()
                        }
                    };
                    l[i] = l[i] * f(m[i]) + l2[i] * f(m2[i]);
                    m[i] = mn;
                    if tg[i].is_nan() {
                        tg[i] = t2[i];
                    }
                }
                (m, l, tg, w)
            },
        );
        let mut gmax = m.clone();
        comm.all_reduce(&mut gmax, ReduceOp::Max)?;
        let mut den: Vec<f32> = (0..bg)
            .map(|i| {
                if m[i] == f32::NEG_INFINITY {
                    0.0
                } else {
                    (l[i] * ((m[i] - gmax[i]) as f64).exp()) as f32
                }
            })
            .collect();
        comm.all_reduce(&mut den, ReduceOp::Sum)?;
        let mut local_loss = 0.0f64;
        let mut finite = gmax.iter().all(|v| v.is_finite()) && den.iter().all(|v| v.is_finite() && *v > 0.0);
        for i in 0..bg {
            if target[i] != NONE {
                let lp = (tgt[i] - gmax[i]) as f64 - (den[i] as f64).ln();
                finite &= lp.is_finite();
                local_loss -= lp.max(-69.0); // log(1e-30): arcface_torch's clamp
            }
        }
        let mut flags = [local_loss as f32, if finite { 0.0 } else { 1.0 }];
        comm.all_reduce(&mut flags, ReduceOp::Sum)?;
        let loss = flags[0] / bg as f32;
        let coef = den.iter().map(|&s| (1.0 / (bg as f64 * s as f64)) as f32).collect();
        Ok(Stats {
            gmax,
            coef,
            loss,
            skip: flags[1] != 0.0 || !loss.is_finite(),
        })
    }

    /// Turns a tile's class-major logits into dL/dlogit `(p − onehot)/B`, through the margin
    /// at the targets, times the class's `f = s/‖w‖` for margin losses (the rows in the
    /// product are `diag(f)·R`), in place.
    fn logits_to_grad(&self, st: &Stats, hits: &[(usize, usize, f32)], t: &mut Tile) {
        let bg = st.gmax.len();
        let inv_bg = 1.0 / bg as f32;
        let targets: Vec<f32> = hits.iter().map(|&(i, j, _)| t.logits[j * bg + i]).collect();
        for (j, row) in t.logits.chunks_exact_mut(bg.max(1)).enumerate() {
            let f = t.scale.get(j).copied().unwrap_or(1.0);
            math::exp_sub_scale(row, &st.gmax, &st.coef, f);
        }
        for (&(i, j, dphi), &z) in hits.iter().zip(&targets) {
            let f = t.scale.get(j).copied().unwrap_or(1.0);
            let p = math::exp(z - st.gmax[i]) * st.coef[i];
            t.logits[j * bg + i] = (p - inv_bg) * dphi * f;
        }
    }

    /// The weight gradient of row `k` of a pass-2 tile as `du − b·w` (`w` the raw row): for
    /// margin losses `du = f·dL/d(s·ŵ)`, so dL/dw = du − w·(w·du)/‖w‖²; for softmax `du` is
    /// dL/dw itself and `b = 0`.
    fn weight_grad<'t>(&self, t: &'t Tile, k: usize, w: &[f32]) -> (&'t [f32], f32) {
        let d = self.emb_dim;
        let du = &t.du[k * d..(k + 1) * d];
        if self.margin.is_some() {
            let norm = t.norms[k];
            (du, math::dot_wide(w, du) / (norm * norm))
        } else {
            (du, 0.0)
        }
    }

    /// Pass 2: per tile, `du` (see [`MarginSoftmax::weight_grad`]) and dL/db to `sink` (rows,
    /// tile, db) and dL/dX̂ summed.
    fn backward_tiles(
        &self,
        src: &dyn RowSource,
        bias: Option<&[f32]>,
        sel: &[u32],
        target: &[u32],
        p: &Prepared,
        st: &Stats,
        sink: &TileSink<'_>,
    ) -> Vec<f32> {
        let (bg, d) = (p.bg, self.emb_dim);
        let tiles = self.tiles(sel.len());
        let (dx, ..) = ordered_fold(
            tiles.len(),
            || (vec![0.0f32; bg * d], Vec::new()),
            |(mut dx, mut db), k| {
                with_scratch(|t, raw| {
                    let r = tiles[k].clone();
                    let n = r.len();
                    let rows = &sel[r.clone()];
                    // SAFETY: a tile's rows are written only by its own sink, after `w`'s last use.
                    let w = unsafe { tile_rows(src, rows, d, raw) };
                    self.tile_logits(w, bias, rows, p, t);
                    let hits = self.apply_margin(target, r.start, n, &mut t.logits);
                    self.logits_to_grad(st, &hits, t);
                    db.clear();
                    if bias.is_some() {
                        db.extend(t.logits.chunks(bg.max(1)).map(|row| row.iter().sum::<f32>()));
                    }
                    // dX̂ += Gᵀ·R (G is [n, bg]) ; du = G·X̂
                    matmul(Trans::T, Trans::N, bg, d, n, &t.logits, w, &mut dx, true, Par::Seq);
                    t.du.resize(n * d, 0.0);
                    matmul(
                        Trans::N,
                        Trans::N,
                        n,
                        d,
                        bg,
                        &t.logits,
                        &p.all,
                        &mut t.du,
                        false,
                        Par::Seq,
                    );
                    sink(rows, t, &db);
                });
                (dx, db)
            },
            |mut a, b| {
                for (x, y) in a.0.iter_mut().zip(&b.0) {
                    *x += y;
                }
                a
            },
        );
        dx
    }

    /// Reduce-scatters dL/dX̂ to the owners and backs it through the local normalisation.
    fn finish_dx(&self, dall: Vec<f32>, p: &Prepared, comm: &dyn Communicator) -> Result<Tensor, HeadError> {
        let d = self.emb_dim;
        let mut dx = vec![0.0f32; p.b * d];
        comm.reduce_scatter(&dall, &mut dx, ReduceOp::Sum)?;
        if self.margin.is_some() {
            normalize_rows_backward(&p.xhat, &p.norms, d, &mut dx);
        }
        Ok(Tensor::from_vec(&[p.b, d], dx).expect("b×d"))
    }

    fn skipped(&self, p: &Prepared, loss: f32, rows: usize) -> HeadStep {
        HeadStep {
            loss,
            d_emb: Tensor::zeros(&[p.b, self.emb_dim]),
            skipped: true,
            rows,
        }
    }

    /// One training step, fused: forward, backward, and SGD on the selected rows in place.
    pub fn step(
        &mut self,
        emb: &Tensor,
        labels: &[u32],
        comm: &dyn Communicator,
        upd: &Update,
    ) -> Result<HeadStep, HeadError> {
        let p = self.prepare(emb, labels, comm)?;
        let (sel, target) = self.selection(&p.labels);
        let st = self.forward_stats(&self.weight, &sel, &target, &p, comm)?;
        self.steps += 1;
        if st.skip {
            return Ok(self.skipped(&p, st.loss, sel.len()));
        }
        let step_seed = self.seed ^ self.steps.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let shard_start = self.shard.start as u64;
        // Take the state out so that the sink can write it while `self` is read.
        let mut weight = std::mem::replace(&mut self.weight, Rows::zeros(0, self.emb_dim, self.cfg.dtype));
        let mut momentum = std::mem::replace(&mut self.momentum, Rows::zeros(0, self.emb_dim, self.cfg.dtype));
        let bias_before = self.bias.clone();
        let mut bias = self.bias.take();
        let mut bias_m = self.bias_momentum.take();
        let dall = {
            let ww = RowWriter::new(&mut weight);
            let mw = RowWriter::new(&mut momentum);
            let bias_cell = Mutex::new((bias.as_mut(), bias_m.as_mut()));
            let d = self.emb_dim;
            let (lr, mu, wd) = (upd.lr, upd.momentum, upd.weight_decay);
            let sink = |rows: &[u32], t: &Tile, db: &[f32]| {
                // Row buffers of the bf16 path only.
                let (mut g, mut v, mut w) = (Vec::new(), Vec::new(), Vec::new());
                for (k, &r) in rows.iter().enumerate() {
                    if let Some(&ahead) = rows.get(k + PREFETCH_ROWS) {
                        mw.prefetch_row(ahead as usize);
                    }
                    let r = r as usize;
                    // SAFETY: tiles partition the selection, so row r belongs to this tile only,
                    // no other thread touches it during this call, and the tile's reads of it
                    // are over.
                    match unsafe { (ww.f32_row_mut(r), mw.f32_row_mut(r)) } {
                        (Some(wr), Some(vr)) => {
                            let (du, b) = self.weight_grad(t, k, wr);
                            math::sgd_momentum_minus(wr, vr, du, b, lr, mu, wd);
                        }
                        _ => {
                            g.resize(d, 0.0);
                            v.resize(d, 0.0);
                            w.resize(d, 0.0);
                            let mut rng = Rng::stream(step_seed, shard_start + r as u64);
                            // SAFETY: as above, row r is exclusive to this tile.
                            unsafe {
                                mw.read_row(r, &mut v);
                                ww.read_row(r, &mut w);
                            }
                            let (du, b) = self.weight_grad(t, k, &w);
                            math::lin2(&mut g, du, 1.0, &w, -b);
                            math::sgd_momentum(&mut w, &mut v, &g, lr, mu, wd);
                            // SAFETY: as above.
                            unsafe {
                                mw.write_row(r, &v, &mut rng);
                                ww.write_row(r, &w, &mut rng);
                            }
                        }
                    }
                }
                if !db.is_empty() {
                    let mut g = bias_cell.lock().unwrap_or_else(|e| e.into_inner());
                    let (b, bm) = &mut *g;
                    if let (Some(b), Some(bm)) = (b.as_deref_mut(), bm.as_deref_mut()) {
                        for (&r, &gv) in rows.iter().zip(db) {
                            let r = r as usize;
                            bm[r] = mu * bm[r] + gv + wd * b[r];
                            b[r] -= lr * bm[r];
                        }
                    }
                }
            };
            // Tiles read the bias of their own rows before updating them: a copy keeps the
            // borrow simple (C floats, small next to the weights).
            self.backward_tiles(&ww, bias_before.as_deref(), &sel, &target, &p, &st, &sink)
        };
        self.weight = weight;
        self.momentum = momentum;
        self.bias = bias;
        self.bias_momentum = bias_m;
        let d_emb = self.finish_dx(dall, &p, comm)?;
        Ok(HeadStep {
            loss: st.loss,
            d_emb,
            skipped: false,
            rows: sel.len(),
        })
    }

    /// The fused passes with the gradients collected instead of applied (nothing changes).
    pub fn gradients(&self, emb: &Tensor, labels: &[u32], comm: &dyn Communicator) -> Result<Gradients, HeadError> {
        let p = self.prepare(emb, labels, comm)?;
        let (sel, target) = self.selection(&p.labels);
        let st = self.forward_stats(&self.weight, &sel, &target, &p, comm)?;
        let d = self.emb_dim;
        let s = self.shard.len();
        if st.skip {
            return Ok(Gradients {
                step: self.skipped(&p, st.loss, sel.len()),
                weight: vec![0.0; s * d],
                bias: None,
            });
        }
        let out = Mutex::new((
            vec![0.0f32; s * d],
            vec![0.0f32; if self.bias.is_some() { s } else { 0 }],
        ));
        let sink = |rows: &[u32], t: &Tile, db: &[f32]| {
            let mut w = vec![0.0f32; d];
            let mut g = out.lock().unwrap_or_else(|e| e.into_inner());
            for (k, &r) in rows.iter().enumerate() {
                let r = r as usize;
                self.weight.read_row(r, &mut w);
                let (du, b) = self.weight_grad(t, k, &w);
                math::lin2(&mut g.0[r * d..(r + 1) * d], du, 1.0, &w, -b);
                if !db.is_empty() {
                    g.1[r] = db[k];
                }
            }
        };
        let dall = self.backward_tiles(&self.weight, self.bias.as_deref(), &sel, &target, &p, &st, &sink);
        let d_emb = self.finish_dx(dall, &p, comm)?;
        let (weight, bias) = out.into_inner().unwrap_or_else(|e| e.into_inner());
        Ok(Gradients {
            step: HeadStep {
                loss: st.loss,
                d_emb,
                skipped: false,
                rows: sel.len(),
            },
            weight,
            bias: self.bias.is_some().then_some(bias),
        })
    }

    /// The plain, unfused reference: every logit of the selection in memory (`[bg, n]`, one
    /// transposed product), f64 softmax, the full dW; shares no tile code with the fused passes.
    pub fn reference_gradients(
        &self,
        emb: &Tensor,
        labels: &[u32],
        comm: &dyn Communicator,
    ) -> Result<Gradients, HeadError> {
        let p = self.prepare(emb, labels, comm)?;
        let (sel, target) = self.selection(&p.labels);
        let (d, n, bg, s) = (self.emb_dim, sel.len(), p.bg, self.shard.len());
        let mut raw = vec![0.0f32; n * d];
        for (k, &r) in sel.iter().enumerate() {
            self.weight.read_row(r as usize, &mut raw[k * d..(k + 1) * d]);
        }
        let mut used = raw.clone();
        let wnorms = if self.margin.is_some() {
            normalize_rows(&raw, d, &mut used)
        } else {
            Vec::new()
        };
        let mut z = vec![0.0f32; bg * n];
        matmul(Trans::N, Trans::T, bg, n, d, &p.all, &used, &mut z, false, Par::Rayon);
        let mut hits = Vec::new();
        for i in 0..bg {
            for (j, &r) in sel.iter().enumerate() {
                let v = &mut z[i * n + j];
                match &self.margin {
                    Some(_) => *v *= self.cfg.scale,
                    None => *v += self.bias.as_ref().map_or(0.0, |b| b[r as usize]),
                }
            }
            if target[i] != NONE {
                let j = target[i] as usize;
                let mut dphi = 1.0;
                if let Some(m) = &self.margin {
                    let v = &mut z[i * n + j];
                    let (phi, dp) = m.apply(*v / self.cfg.scale);
                    *v = (self.cfg.scale as f64 * phi) as f32;
                    dphi = dp;
                }
                hits.push((i, j, dphi));
            }
        }
        let mut gmax: Vec<f32> = (0..bg)
            .map(|i| z[i * n..(i + 1) * n].iter().copied().fold(f32::NEG_INFINITY, f32::max))
            .collect();
        comm.all_reduce(&mut gmax, ReduceOp::Max)?;
        let mut den: Vec<f32> = (0..bg)
            .map(|i| {
                z[i * n..(i + 1) * n]
                    .iter()
                    .map(|&v| ((v - gmax[i]) as f64).exp())
                    .sum::<f64>() as f32
            })
            .collect();
        comm.all_reduce(&mut den, ReduceOp::Sum)?;
        let mut local = 0.0f64;
        for &(i, j, _) in &hits {
            local -= (((z[i * n + j] - gmax[i]) as f64) - (den[i] as f64).ln()).max(-69.0);
        }
        let finite =
            z.iter().all(|v| v.is_finite()) && den.iter().all(|v| v.is_finite() && *v > 0.0) && local.is_finite();
        let mut flags = [local as f32, if finite { 0.0 } else { 1.0 }];
        comm.all_reduce(&mut flags, ReduceOp::Sum)?;
        let loss = flags[0] / bg as f32;
        if flags[1] != 0.0 {
            return Ok(Gradients {
                step: self.skipped(&p, loss, n),
                weight: vec![0.0; s * d],
                bias: None,
            });
        }
        // dL/dlogit = (p − onehot)/B, through the margin and the scale, in f64.
        let sc = if self.margin.is_some() {
            self.cfg.scale as f64
        } else {
            1.0
        };
        let mut g = vec![0.0f32; bg * n];
        for i in 0..bg {
            for j in 0..n {
                let pr = ((z[i * n + j] - gmax[i]) as f64).exp() / den[i] as f64;
                g[i * n + j] = (pr / bg as f64 * sc) as f32;
            }
        }
        for &(i, j, dphi) in &hits {
            g[i * n + j] = ((g[i * n + j] as f64 - sc / bg as f64) * dphi) as f32;
        }
        let mut dws = vec![0.0f32; n * d];
        matmul(Trans::T, Trans::N, n, d, bg, &g, &p.all, &mut dws, false, Par::Rayon);
        if self.margin.is_some() {
            normalize_rows_backward(&used, &wnorms, d, &mut dws);
        }
        let mut dall = vec![0.0f32; bg * d];
        matmul(Trans::N, Trans::N, bg, d, n, &g, &used, &mut dall, false, Par::Rayon);
        let mut weight = vec![0.0f32; s * d];
        for (k, &r) in sel.iter().enumerate() {
            weight[r as usize * d..(r as usize + 1) * d].copy_from_slice(&dws[k * d..(k + 1) * d]);
        }
        let bias = self.bias.as_ref().map(|_| {
            let mut db = vec![0.0f32; s];
            for i in 0..bg {
                for (k, &r) in sel.iter().enumerate() {
                    db[r as usize] += g[i * n + k];
                }
            }
            db
        });
        let d_emb = self.finish_dx(dall, &p, comm)?;
        Ok(Gradients {
            step: HeadStep {
                loss,
                d_emb,
                skipped: false,
                rows: n,
            },
            weight,
            bias,
        })
    }

    /// The predicted class of each local embedding: arg-max cosine (margin losses) or logit
    /// (softmax) over every class of every shard, in tiles. Ties go to the lowest class.
    pub fn predict(&self, emb: &Tensor, comm: &dyn Communicator) -> Result<Vec<u32>, HeadError> {
        let labels = vec![0u32; emb.shape().first().copied().unwrap_or(0)];
        let p = self.prepare(emb, &labels, comm)?;
        let bg = p.bg;
        let all: Vec<u32> = (0..self.shard.len() as u32).collect();
        let better = |a: (f32, u32), b: (f32, u32)| if b.0 > a.0 || (b.0 == a.0 && b.1 < a.1) { b } else { a };
        let best = self
            .tiles(all.len())
            .into_par_iter()
            .fold(
                || vec![(f32::NEG_INFINITY, u32::MAX); bg],
                |mut best, r| {
                    with_scratch(|t, raw| {
                        let rows = &all[r.clone()];
                        // SAFETY: nothing writes the store during `predict`.
                        let w = unsafe { tile_rows(&self.weight, rows, self.emb_dim, raw) };
                        self.tile_logits(w, self.bias.as_deref(), rows, &p, t);
                        for (j, row) in t.logits.chunks(bg.max(1)).enumerate() {
                            let class = (self.shard.start + r.start + j) as u32;
                            for (b, &v) in best.iter_mut().zip(row) {
                                *b = better(*b, (v, class));
                            }
                        }
                    });
                    best
                },
            )
            .reduce(
                || vec![(f32::NEG_INFINITY, u32::MAX); bg],
                |a, b| a.into_iter().zip(b).map(|(x, y)| better(x, y)).collect(),
            );
        let flat: Vec<f32> = best.iter().flat_map(|&(v, j)| [v, f32::from_bits(j)]).collect();
        let mut gathered = vec![0.0f32; flat.len() * comm.world_size()];
        comm.all_gather(&flat, &mut gathered)?;
        let r = comm.rank();
        Ok((r * p.b..(r + 1) * p.b)
            .map(|i| {
                let mut b = (f32::NEG_INFINITY, u32::MAX);
                for k in 0..comm.world_size() {
                    let o = k * 2 * bg + 2 * i;
                    b = better(b, (gathered[o], gathered[o + 1].to_bits()));
                }
                b.1
            })
            .collect())
    }
}

/// Receives each tile's gradients in pass 2: (local rows, the tile with dL/d(used) in `du`
/// (see [`MarginSoftmax::weight_grad`]), dL/db `[n]` or empty).
type TileSink<'a> = dyn Fn(&[u32], &Tile, &[f32]) + Sync + 'a;

/// The outcome of pass 1 after the all-reduces.
struct Stats {
    gmax: Vec<f32>,
    /// `1 / (bg · Σ)` per global row: e^(z − max) times this is the gradient `p / B`.
    coef: Vec<f32>,
    loss: f32,
    skip: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;
    use lsc_comm::{LocalComm, run_ranks};
    use lsc_nn::gradcheck::{CheckOptions, check_grad};

    const LOSSES: [LossKind; 4] = [
        LossKind::Softmax,
        LossKind::ArcFace,
        LossKind::CosFace,
        LossKind::Combined,
    ];

    /// The SGD update the tests step with.
    const UPD: Update = Update {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 5e-4,
    };

    fn cfg(loss: LossKind) -> HeadConfig {
        let mut c = HeadConfig::new(loss);
        c.init_std = 0.5;
        c.scale = 8.0; // small enough that the loss is smooth for finite differences
        c.tile = 3; // ragged tiles on small shards
        c
    }

    fn batch(b: usize, d: usize, c: usize, seed: u64) -> (Tensor, Vec<u32>) {
        let mut rng = Rng::new(seed);
        let emb = Tensor::randn(&[b, d], 1.0, &mut rng);
        let labels = (0..b).map(|i| ((i * 7 + seed as usize) % c) as u32).collect();
        (emb, labels)
    }

    fn with_bias(h: &mut MarginSoftmax) {
        if let Some(b) = &mut h.bias {
            let mut rng = Rng::new(9);
            for v in b.iter_mut() {
                *v = rng.normal() * 0.5;
            }
        }
    }

    fn close(what: &str, a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * scale, "{what}[{i}]: {x} vs {y} (scale {scale})");
        }
    }

    #[test]
    fn reference_gradients_match_finite_differences_for_every_loss() {
        for loss in LOSSES {
            let mut head = MarginSoftmax::new(&cfg(loss), 7, 5, &LocalComm, 1);
            with_bias(&mut head);
            let (emb, labels) = batch(6, 5, 7, 1);
            let g = head.reference_gradients(&emb, &labels, &LocalComm).unwrap();
            assert!(!g.step.skipped);
            let opts = CheckOptions {
                eps: 5e-3,
                atol: 3e-4,
                rtol: 1e-2,
                max_checks: 40,
                seed: 2,
            };
            let mut rng = Rng::new(4);
            let loss_of =
                |h: &MarginSoftmax, e: &Tensor| h.reference_gradients(e, &labels, &LocalComm).unwrap().step.loss as f64;
            let mut x = emb.data().to_vec();
            check_grad(
                &format!("{loss:?} emb"),
                &mut x,
                g.step.d_emb.data(),
                &mut |v| loss_of(&head, &Tensor::from_vec(emb.shape(), v.to_vec()).unwrap()),
                &opts,
                &mut rng,
            )
            .unwrap();
            let mut w = head.weights();
            check_grad(
                &format!("{loss:?} weight"),
                &mut w,
                &g.weight,
                &mut |v| {
                    head.set_weights(v.to_vec());
                    loss_of(&head, &emb)
                },
                &opts,
                &mut rng,
            )
            .unwrap();
            head.set_weights(w);
            if let Some(db) = &g.bias {
                let mut b = head.bias.clone().unwrap();
                check_grad(
                    "bias",
                    &mut b,
                    db,
                    &mut |v| {
                        head.bias = Some(v.to_vec());
                        loss_of(&head, &emb)
                    },
                    &opts,
                    &mut rng,
                )
                .unwrap();
            }
        }
    }

    #[test]
    fn fused_kernel_matches_the_reference_for_every_loss_and_tile() {
        for loss in LOSSES {
            for tile in [1, 3, 7, 64] {
                for rate in [1.0f32, 0.5] {
                    let mut c = cfg(loss);
                    c.tile = tile;
                    c.sample_rate = rate;
                    c.scale = 30.0;
                    let mut head = MarginSoftmax::new(&c, 11, 6, &LocalComm, 3);
                    with_bias(&mut head);
                    let (emb, labels) = batch(5, 6, 11, 2);
                    let r = head.reference_gradients(&emb, &labels, &LocalComm).unwrap();
                    let f = head.gradients(&emb, &labels, &LocalComm).unwrap();
                    let what = format!("{loss:?} tile {tile} rate {rate}");
                    assert!(
                        (r.step.loss - f.step.loss).abs() < 1e-5 * r.step.loss.abs().max(1.0),
                        "{what}: loss {} vs {}",
                        f.step.loss,
                        r.step.loss
                    );
                    assert_eq!(r.step.rows, f.step.rows);
                    close(&format!("{what} d_emb"), f.step.d_emb.data(), r.step.d_emb.data(), 1e-5);
                    close(&format!("{what} dW"), &f.weight, &r.weight, 1e-5);
                    if let (Some(a), Some(b)) = (&f.bias, &r.bias) {
                        close(&format!("{what} db"), a, b, 1e-5);
                    }
                }
            }
        }
    }

    /// Runs `f` on `n` thread ranks with the same head config and batch split over ranks.
    fn sharded(n: usize, c: &HeadConfig, classes: usize, emb: &Tensor, labels: &[u32]) -> Vec<Gradients> {
        let b = emb.dim(0) / n;
        let d = emb.dim(1);
        run_ranks(n, |comm| {
            let r = comm.rank();
            let mut head = MarginSoftmax::new(c, classes, d, &comm, 5);
            with_bias_sharded(&mut head, classes);
            let e = Tensor::from_vec(&[b, d], emb.data()[r * b * d..(r + 1) * b * d].to_vec()).unwrap();
            head.gradients(&e, &labels[r * b..(r + 1) * b], &comm).unwrap()
        })
    }

    /// A bias that depends on the class only, so that shards agree with the whole.
    fn with_bias_sharded(h: &mut MarginSoftmax, _classes: usize) {
        let start = h.shard.start;
        if let Some(b) = &mut h.bias {
            for (k, v) in b.iter_mut().enumerate() {
                *v = ((start + k) as f32 * 0.37).sin();
            }
        }
    }

    #[test]
    fn sharded_over_1_2_3_8_thread_ranks_equals_unsharded() {
        // Batches: spread labels, all labels on the first shard, labels on shard edges.
        let classes = 13;
        let lab_sets: Vec<Vec<u32>> = vec![
            (0..24).map(|i| (i * 5 % classes) as u32).collect(),
            vec![0; 24],
            (0..24)
                .map(|i| [0u32, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12][i % 13])
                .collect(),
        ];
        for loss in LOSSES {
            let mut c = cfg(loss);
            c.scale = 30.0;
            for labels in &lab_sets {
                let emb = Tensor::randn(&[24, 4], 1.0, &mut Rng::new(8));
                let one = sharded(1, &c, classes, &emb, labels).remove(0);
                for n in [2, 3, 8] {
                    let parts = sharded(n, &c, classes, &emb, labels);
                    let what = format!("{loss:?} {n} ranks labels {:?}", &labels[..4]);
                    let dw: Vec<f32> = parts.iter().flat_map(|g| g.weight.clone()).collect();
                    let de: Vec<f32> = parts.iter().flat_map(|g| g.step.d_emb.data().to_vec()).collect();
                    for g in &parts {
                        assert!(
                            (g.step.loss - one.step.loss).abs() < 1e-5 * one.step.loss.max(1.0),
                            "{what}: loss {} vs {}",
                            g.step.loss,
                            one.step.loss
                        );
                    }
                    close(&format!("{what} dW"), &dw, &one.weight, 2e-5);
                    close(&format!("{what} d_emb"), &de, one.step.d_emb.data(), 2e-5);
                    if let Some(b1) = &one.bias {
                        let db: Vec<f32> = parts.iter().flat_map(|g| g.bias.clone().unwrap()).collect();
                        close(&format!("{what} db"), &db, b1, 2e-5);
                    }
                }
            }
        }
    }

    #[test]
    fn empty_shards_and_more_ranks_than_classes_stay_finite() {
        let c = cfg(LossKind::ArcFace);
        let emb = Tensor::randn(&[16, 4], 1.0, &mut Rng::new(1));
        let labels: Vec<u32> = (0..16).map(|i| (i % 5) as u32).collect();
        let one = sharded(1, &c, 5, &emb, &labels).remove(0);
        let parts = sharded(8, &c, 5, &emb, &labels);
        assert!(parts[7].weight.is_empty());
        let dw: Vec<f32> = parts.iter().flat_map(|g| g.weight.clone()).collect();
        close("dW", &dw, &one.weight, 2e-5);
        assert!(
            parts
                .iter()
                .all(|g| g.step.loss.is_finite() && g.step.d_emb.all_finite())
        );
    }

    #[test]
    fn the_fused_update_is_sgd_on_the_reference_gradient() {
        for loss in LOSSES {
            let c = cfg(loss);
            let mut head = MarginSoftmax::new(&c, 9, 4, &LocalComm, 7);
            with_bias(&mut head);
            let (emb, labels) = batch(6, 4, 9, 3);
            let upd = UPD;
            let w0 = head.weights();
            let b0 = head.bias.clone();
            let g = head.reference_gradients(&emb, &labels, &LocalComm).unwrap();
            let s = head.step(&emb, &labels, &LocalComm, &upd).unwrap();
            assert!(!s.skipped && (s.loss - g.step.loss).abs() < 1e-5);
            close("d_emb", s.d_emb.data(), g.step.d_emb.data(), 1e-5);
            // First step from zero momentum: v = g + wd·w, w' = w − lr·v.
            let want: Vec<f32> = w0
                .iter()
                .zip(&g.weight)
                .map(|(w, gw)| w - 0.1 * (gw + 5e-4 * w))
                .collect();
            close("weights", &head.weights(), &want, 1e-6);
            let v: Vec<f32> = w0.iter().zip(&g.weight).map(|(w, gw)| gw + 5e-4 * w).collect();
            close("momentum", &head.momentum(), &v, 1e-6);
            if let (Some(b0), Some(db)) = (b0, &g.bias) {
                let want: Vec<f32> = b0.iter().zip(db).map(|(b, d)| b - 0.1 * (d + 5e-4 * b)).collect();
                close("bias", head.bias().unwrap(), &want, 1e-6);
            }
            assert_eq!(head.steps(), 1);
        }
    }

    #[test]
    fn no_nan_when_cos_is_exactly_one() {
        let c = HeadConfig::new(LossKind::ArcFace);
        let mut head = MarginSoftmax::new(&c, 3, 4, &LocalComm, 0);
        let w = head.weights();
        let mut e = w[0..4].to_vec();
        e.extend(w[4..8].iter().map(|v| -v));
        let emb = Tensor::from_vec(&[2, 4], e).unwrap();
        let g = head.gradients(&emb, &[0, 1], &LocalComm).unwrap();
        assert!(!g.step.skipped && g.step.loss.is_finite());
        assert!(g.step.d_emb.all_finite() && g.weight.iter().all(|v| v.is_finite()));
        let s = head.step(&emb, &[0, 1], &LocalComm, &UPD).unwrap();
        assert!(!s.skipped && head.weights().iter().all(|v| v.is_finite()));
    }

    #[test]
    fn a_non_finite_embedding_skips_the_step_on_every_rank_without_writing() {
        let c = cfg(LossKind::ArcFace);
        let results = run_ranks(2, |comm| {
            let mut head = MarginSoftmax::new(&c, 6, 3, &comm, 1);
            let mut emb = Tensor::randn(&[2, 3], 1.0, &mut Rng::new(comm.rank() as u64));
            if comm.rank() == 1 {
                emb.data_mut()[1] = f32::NAN;
            }
            let w0 = head.weights();
            let s = head.step(&emb, &[0, 5], &comm, &UPD).unwrap();
            (
                s.skipped,
                head.weights() == w0,
                head.momentum().iter().all(|&v| v == 0.0),
            )
        });
        assert!(
            results.iter().all(|&(skipped, same, zero)| skipped && same && zero),
            "{results:?}"
        );
    }

    #[test]
    fn partial_fc_touches_only_the_sampled_rows() {
        let mut c = cfg(LossKind::CosFace);
        c.sample_rate = 0.25;
        let mut head = MarginSoftmax::new(&c, 40, 4, &LocalComm, 2);
        let (emb, labels) = batch(4, 4, 40, 5);
        let w0 = head.weights();
        let s = head.step(&emb, &labels, &LocalComm, &UPD).unwrap();
        assert_eq!(s.rows, 10);
        let w1 = head.weights();
        let changed: Vec<usize> = (0..40)
            .filter(|&r| w0[r * 4..(r + 1) * 4] != w1[r * 4..(r + 1) * 4])
            .collect();
        assert_eq!(changed.len(), 10, "{changed:?}");
        for l in &labels {
            assert!(changed.contains(&(*l as usize)), "positive {l} not updated");
        }
        let m = head.momentum();
        assert!(
            (0..40)
                .filter(|r| !changed.contains(r))
                .all(|r| m[r * 4..(r + 1) * 4].iter().all(|&v| v == 0.0))
        );
        // Rate 1 is exactly the full computation.
        let mut full = cfg(LossKind::CosFace);
        full.sample_rate = 1.0;
        let h1 = MarginSoftmax::new(&full, 40, 4, &LocalComm, 2);
        let mut h2 = MarginSoftmax::new(&full, 40, 4, &LocalComm, 2);
        h2.cfg.sample_rate = 0.999_999_9; // rounds up to every row, but through the sampler
        let (a, b) = (
            h1.gradients(&emb, &labels, &LocalComm).unwrap(),
            h2.gradients(&emb, &labels, &LocalComm).unwrap(),
        );
        assert_eq!(a.weight, b.weight);
        assert_eq!(a.step.loss, b.step.loss);
    }

    #[test]
    fn bf16_storage_halves_the_bytes_and_tracks_f32() {
        let mut c32 = cfg(LossKind::ArcFace);
        c32.scale = 16.0;
        let mut c16 = c32.clone();
        c16.dtype = DType::Bf16;
        let mut h32 = MarginSoftmax::new(&c32, 50, 16, &LocalComm, 4);
        let mut h16 = MarginSoftmax::new(&c16, 50, 16, &LocalComm, 4);
        assert_eq!(h16.state_bytes() * 2, h32.state_bytes());
        let upd = Update { lr: 0.05, ..UPD };
        let mut l32 = 0.0;
        let mut l16 = 0.0;
        for step in 0..30 {
            let (emb, labels) = batch(8, 16, 50, step);
            l32 = h32.step(&emb, &labels, &LocalComm, &upd).unwrap().loss;
            l16 = h16.step(&emb, &labels, &LocalComm, &upd).unwrap().loss;
        }
        assert!((l32 - l16).abs() < 0.05 * l32, "f32 {l32} vs bf16 {l16}");
    }

    #[test]
    fn bad_labels_and_shapes_are_named() {
        let head = MarginSoftmax::new(&cfg(LossKind::CosFace), 5, 3, &LocalComm, 4);
        let (emb, _) = batch(4, 3, 5, 0);
        let e = head.gradients(&emb, &[0, 1, 9, 2], &LocalComm).unwrap_err().to_string();
        assert!(e.contains("label 9 of sample 2") && e.contains("0..5"), "{e}");
        let e = head
            .gradients(&Tensor::zeros(&[4, 2]), &[0; 4], &LocalComm)
            .unwrap_err()
            .to_string();
        assert!(e.contains("embeddings"), "{e}");
    }

    #[test]
    fn predict_picks_the_nearest_class_across_shards() {
        let c = HeadConfig::new(LossKind::ArcFace);
        for n in [1, 3] {
            let out = run_ranks(n, |comm| {
                let head = MarginSoftmax::new(&c, 7, 8, &comm, 5);
                // Every rank asks for classes 6, 0 and 3, built from the full matrix's rows.
                let full = MarginSoftmax::new(&c, 7, 8, &LocalComm, 5).weights();
                let e: Vec<f32> = [6usize, 0, 3]
                    .iter()
                    .flat_map(|&k| full[k * 8..(k + 1) * 8].iter().map(|v| v * 2.0))
                    .collect();
                head.predict(&Tensor::from_vec(&[3, 8], e).unwrap(), &comm).unwrap()
            });
            assert!(out.iter().all(|p| p == &vec![6, 0, 3]), "{n} ranks: {out:?}");
        }
    }
}
