//! Batch normalisation over `[N, C, H, W]` (or `[N, C]`), per channel.
//!
//! Train: normalise with the batch mean and biased variance, update the running statistics
//! with `running = (1 − momentum)·running + momentum·batch` (PyTorch's convention, unbiased
//! variance; PLSC's "momentum 0.9" is the same rule). Eval: use the running statistics.

use crate::{Layer, Mode, Param};
use lsc_tensor::Tensor;
use rayon::prelude::*;

pub struct BatchNorm {
    pub weight: Param,
    pub bias: Param,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    name: String,
    c: usize,
    pub eps: f32,
    pub momentum: f32,
    // Cached for backward.
    xhat: Tensor,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
}

/// (channels, spatial size per channel plane, batch) of a `[N, C, ...]` tensor.
fn dims(x: &Tensor, c: usize, name: &str) -> (usize, usize) {
    assert!(
        x.shape().len() >= 2 && x.dim(1) == c,
        "{name}: expected [N, {c}, ...], got {:?}",
        x.shape()
    );
    let hw: usize = x.shape()[2..].iter().product();
    (x.dim(0), hw)
}

impl BatchNorm {
    pub fn new(name: &str, c: usize, eps: f32, momentum: f32) -> BatchNorm {
        BatchNorm {
            weight: Param::new(format!("{name}.weight"), Tensor::full(&[c], 1.0)),
            bias: Param::new(format!("{name}.bias"), Tensor::zeros(&[c])),
            running_mean: Tensor::zeros(&[c]),
            running_var: Tensor::full(&[c], 1.0),
            name: name.to_string(),
            c,
            eps,
            momentum,
            xhat: Tensor::default(),
            mean: Vec::new(),
            inv_std: Vec::new(),
        }
    }

    /// Per-channel totals of the pair `f(channel, plane)` over the batch, in f64.
    fn channel_sums2(
        &self,
        data: &[f32],
        hw: usize,
        f: impl Fn(usize, &[f32]) -> (f64, f64) + Sync,
    ) -> (Vec<f64>, Vec<f64>) {
        let c = self.c;
        let planes: Vec<(f64, f64)> = data
            .par_chunks(hw.max(1))
            .enumerate()
            .map(|(i, p)| f(i % c, p))
            .collect();
        let (mut a, mut b) = (vec![0.0f64; c], vec![0.0f64; c]);
        for (i, (u, v)) in planes.iter().enumerate() {
            a[i % c] += u;
            b[i % c] += v;
        }
        (a, b)
    }
}

/// (Σ (x − k), Σ (x − k)²) of one plane, in 8 f32 lanes, returned in f64.
fn plane_sums(p: &[f32], k: f32) -> (f64, f64) {
    let (mut s1, mut s2) = ([0.0f32; 8], [0.0f32; 8]);
    let mut chunks = p.chunks_exact(8);
    for ch in &mut chunks {
        for l in 0..8 {
            let d = ch[l] - k;
            s1[l] += d;
            s2[l] += d * d;
        }
    }
    let (mut t1, mut t2) = (0.0f64, 0.0f64);
    for &v in chunks.remainder() {
        let d = (v - k) as f64;
        t1 += d;
        t2 += d * d;
    }
    (
        t1 + s1.iter().map(|&v| v as f64).sum::<f64>(),
        t2 + s2.iter().map(|&v| v as f64).sum::<f64>(),
    )
}

/// (Σ dy, Σ dy·x̂) of one plane, in 8 f32 lanes, returned in f64.
fn plane_dots(dy: &[f32], xh: &[f32]) -> (f64, f64) {
    let (mut s1, mut s2) = ([0.0f32; 8], [0.0f32; 8]);
    let (mut a, mut b) = (dy.chunks_exact(8), xh.chunks_exact(8));
    for (d, h) in (&mut a).zip(&mut b) {
        for l in 0..8 {
            s1[l] += d[l];
            s2[l] += d[l] * h[l];
        }
    }
    let (mut t1, mut t2) = (0.0f64, 0.0f64);
    for (&d, &h) in a.remainder().iter().zip(b.remainder()) {
        t1 += d as f64;
        t2 += d as f64 * h as f64;
    }
    (
        t1 + s1.iter().map(|&v| v as f64).sum::<f64>(),
        t2 + s2.iter().map(|&v| v as f64).sum::<f64>(),
    )
}

/// An optional activation and residual fused into a BN's output pass: `y = act(bn(x)) + res`.
#[derive(Clone, Copy, Default)]
pub(crate) struct Epilogue<'a> {
    /// PReLU slopes (one, or one per channel).
    pub prelu: Option<&'a [f32]>,
    /// Added after the activation, same shape as the output.
    pub res: Option<&'a Tensor>,
}

impl BatchNorm {
    /// The batch mean and 1/σ per channel (train: also updates the running statistics and
    /// keeps them in `self` for backward), or the running ones (eval: into `eval`, leaving
    /// the training cache alone).
    fn statistics(&mut self, x: &Tensor, mode: Mode, eval: &mut (Vec<f32>, Vec<f32>)) {
        let (n, hw) = dims(x, self.c, &self.name);
        let c = self.c;
        let count = (n * hw) as f64;
        if mode == Mode::Train {
            // One pass of shifted sums (x − k, k = the channel's first value) keeps
            // E[(x−k)²] − E[x−k]² free of cancellation when the mean is large.
            let shift: Vec<f32> = (0..c).map(|ch| x.data()[ch * hw]).collect();
            let (s1, s2) = self.channel_sums2(x.data(), hw, |ch, p| plane_sums(p, shift[ch]));
            let m = self.momentum;
            let unbias = if count > 1.0 { count / (count - 1.0) } else { 1.0 };
            self.mean.clear();
            self.inv_std.clear();
            for ch in 0..c {
                let mean = shift[ch] as f64 + s1[ch] / count;
                let var = (s2[ch] / count - (s1[ch] / count).powi(2)).max(0.0);
                let rm = &mut self.running_mean.data_mut()[ch];
                *rm = (1.0 - m) * *rm + m * mean as f32;
                let rv = &mut self.running_var.data_mut()[ch];
                *rv = (1.0 - m) * *rv + m * (var * unbias) as f32;
                self.mean.push(mean as f32);
                self.inv_std.push((1.0 / (var + self.eps as f64).sqrt()) as f32);
            }
        } else {
            let eps = self.eps;
            eval.0.clear();
            eval.0.extend_from_slice(self.running_mean.data());
            eval.1.clear();
            eval.1
                .extend(self.running_var.data().iter().map(|&v| 1.0 / (v + eps).sqrt()));
        }
    }

    /// `y = act(BN(x)) + res` in one pass over the output (after the statistics pass), `y`
    /// resized in place. In train mode x̂ is cached for [`BatchNorm::backward_fused`]; the
    /// activation's input is recomputed from it there, so nothing else is kept.
    pub(crate) fn forward_fused(&mut self, x: &Tensor, mode: Mode, ep: Epilogue<'_>, y: &mut Tensor) {
        let name = if ep.prelu.is_some() { "bn_prelu.fwd" } else { "bn.fwd" };
        let _t = crate::profile::scope(name, 0.0);
        let (_, hw) = dims(x, self.c, &self.name);
        let c = self.c;
        let mut eval = (Vec::new(), Vec::new());
        self.statistics(x, mode, &mut eval);
        if let Some(r) = ep.res {
            assert_eq!(r.shape(), x.shape(), "{}: residual shape", self.name);
        }
        crate::buf::reshape(y, x.shape());
        let train = mode == Mode::Train;
        if train {
            crate::buf::reshape(&mut self.xhat, x.shape());
        }
        let (mean, inv_std) = if train {
            (&self.mean, &self.inv_std)
        } else {
            (&eval.0, &eval.1)
        };
        let gamma = self.weight.value.data();
        let beta = self.bias.value.data();
        let hw1 = hw.max(1);
        let res = ep.res.map(|r| r.data());
        let xhat = if train { self.xhat.data_mut() } else { &mut [][..] };
        let body = |i: usize, yp: &mut [f32], xp: &[f32], xh: Option<&mut [f32]>| {
            let ch = i % c;
            let (m, s, g, b) = (mean[ch], inv_std[ch], gamma[ch], beta[ch]);
            match xh {
                Some(xh) => {
                    for ((yv, &xv), h) in yp.iter_mut().zip(xp).zip(xh.iter_mut()) {
                        *h = (xv - m) * s;
                        *yv = *h * g + b;
                    }
                }
                None => {
                    for (yv, &xv) in yp.iter_mut().zip(xp) {
                        *yv = (xv - m) * s * g + b;
                    }
                }
            }
            if let Some(a) = ep.prelu {
                let al = a[if a.len() == 1 { 0 } else { ch }];
                for v in yp.iter_mut() {
                    *v = if *v > 0.0 { *v } else { al * *v };
                }
            }
            if let Some(r) = res {
                for (v, &rv) in yp.iter_mut().zip(&r[i * hw1..(i + 1) * hw1]) {
                    *v += rv;
                }
            }
        };
        let yx = y.data_mut().par_chunks_mut(hw1).zip(x.data().par_chunks(hw1));
        if train {
            yx.zip(xhat.par_chunks_mut(hw1))
                .enumerate()
                .for_each(|(i, ((yp, xp), xh))| body(i, yp, xp, Some(xh)));
        } else {
            yx.enumerate().for_each(|(i, (yp, xp))| body(i, yp, xp, None));
        }
    }

    /// The backward of [`BatchNorm::forward_fused`] with the same activation (`prelu`, whose
    /// slope gradient it accumulates) from dL/dy: adds dγ, dβ and writes dL/dx into `dx`
    /// (resized), plus `add` when given (a residual branch's gradient, summed in the same
    /// pass).
    /// Two passes over dy: the channel sums (with the activation's derivative applied on
    /// the fly), then dx.
    pub(crate) fn backward_fused(
        &mut self,
        dy: &Tensor,
        prelu: Option<&mut Param>,
        add: Option<&Tensor>,
        dx: &mut Tensor,
    ) {
        let name = if prelu.is_some() { "bn_prelu.bwd" } else { "bn.bwd" };
        let _t = crate::profile::scope(name, 0.0);
        assert_eq!(dy.shape(), self.xhat.shape(), "{}: output gradient shape", self.name);
        let (n, hw) = dims(dy, self.c, &self.name);
        let hw1 = hw.max(1);
        let c = self.c;
        let count = (n * hw) as f64;
        let xhat = self.xhat.data();
        let gamma = self.weight.value.data();
        let beta = self.bias.value.data();
        let alpha: Option<&[f32]> = prelu.as_ref().map(|p| p.value.data());
        let slope = |ch: usize| alpha.map(|a| a[if a.len() == 1 { 0 } else { ch }]);
        // Per plane: (Σ dz, Σ dz·x̂, Σ dy·z over z ≤ 0), dz = dy·act'(z), z = γ·x̂ + β.
        let planes: Vec<(f64, f64, f64)> = dy
            .data()
            .par_chunks(hw1)
            .zip(xhat.par_chunks(hw1))
            .enumerate()
            .map(|(i, (d, h))| {
                let ch = i % c;
                match slope(ch) {
                    None => {
                        let (a, b) = plane_dots(d, h);
                        (a, b, 0.0)
                    }
                    Some(al) => plane_dots_prelu(d, h, gamma[ch], beta[ch], al),
                }
            })
            .collect();
        let (mut dsum, mut dxh, mut dal) = (vec![0.0f64; c], vec![0.0f64; c], vec![0.0f64; c]);
        for (i, (a, b, e)) in planes.iter().enumerate() {
            dsum[i % c] += a;
            dxh[i % c] += b;
            dal[i % c] += e;
        }
        let inv_std = &self.inv_std;
        if let Some(a) = add {
            assert_eq!(a.shape(), dy.shape(), "{}: added gradient shape", self.name);
        }
        let add = add.map(|a| a.data());
        crate::buf::reshape(dx, dy.shape());
        dx.data_mut()
            .par_chunks_mut(hw1)
            .zip(dy.data().par_chunks(hw1))
            .zip(xhat.par_chunks(hw1))
            .enumerate()
            .for_each(|(i, ((dxp, dyp), hp))| {
                let ch = i % c;
                let k = gamma[ch] * inv_std[ch];
                let mb = (dsum[ch] / count) as f32;
                let mh = (dxh[ch] / count) as f32;
                match slope(ch) {
                    None => {
                        for ((o, &d), &h) in dxp.iter_mut().zip(dyp).zip(hp) {
                            *o = k * (d - mb - h * mh);
                        }
                    }
                    Some(al) => {
                        let (g, b) = (gamma[ch], beta[ch]);
                        for ((o, &d), &h) in dxp.iter_mut().zip(dyp).zip(hp) {
                            let sl = if h * g + b > 0.0 { 1.0 } else { al };
                            *o = k * (d * sl - mb - h * mh);
                        }
                    }
                }
                if let Some(a) = add {
                    for (o, &v) in dxp.iter_mut().zip(&a[i * hw1..(i + 1) * hw1]) {
                        *o += v;
                    }
                }
            });
        for ch in 0..c {
            self.weight.grad.data_mut()[ch] += dxh[ch] as f32;
            self.bias.grad.data_mut()[ch] += dsum[ch] as f32;
        }
        if let Some(p) = prelu {
            let g = p.grad.data_mut();
            if g.len() == 1 {
                g[0] += dal.iter().sum::<f64>() as f32;
            } else {
                for ch in 0..c {
                    g[ch] += dal[ch] as f32;
                }
            }
        }
    }
}

/// (Σ dz, Σ dz·x̂, Σ dy·z over z ≤ 0) of one plane, z = g·x̂ + b, dz = dy·(z > 0 ? 1 : α),
/// in 8 f32 lanes, returned in f64.
fn plane_dots_prelu(dy: &[f32], xh: &[f32], g: f32, b: f32, al: f32) -> (f64, f64, f64) {
    let (mut s1, mut s2, mut s3) = ([0.0f32; 8], [0.0f32; 8], [0.0f32; 8]);
    let (mut a, mut bb) = (dy.chunks_exact(8), xh.chunks_exact(8));
    for (d, h) in (&mut a).zip(&mut bb) {
        for l in 0..8 {
            let z = h[l] * g + b;
            // Selects of constants (branch-free, so the loop vectorises).
            let neg = if z > 0.0 { 0.0 } else { 1.0 };
            let dz = d[l] * (1.0 + neg * (al - 1.0));
            s1[l] += dz;
            s2[l] += dz * h[l];
            s3[l] += neg * d[l] * z;
        }
    }
    let (mut t1, mut t2, mut t3) = (0.0f64, 0.0f64, 0.0f64);
    for (&d, &h) in a.remainder().iter().zip(bb.remainder()) {
        let z = h * g + b;
        let dz = if z > 0.0 { d } else { al * d };
        t1 += dz as f64;
        t2 += dz as f64 * h as f64;
        if z <= 0.0 {
            t3 += d as f64 * z as f64;
        }
    }
    let f = |s: [f32; 8]| s.iter().map(|&v| v as f64).sum::<f64>();
    (t1 + f(s1), t2 + f(s2), t3 + f(s3))
}

impl Layer for BatchNorm {
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Tensor {
        let mut y = Tensor::default();
        self.forward_fused(x, mode, Epilogue::default(), &mut y);
        y
    }

    fn backward(&mut self, dy: &Tensor) -> Tensor {
        let mut dx = Tensor::default();
        self.backward_fused(dy, None, None, &mut dx);
        dx
    }

    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
        f(&mut self.bias);
    }

    fn visit_buffers(&mut self, f: &mut dyn FnMut(&str, &mut Tensor)) {
        f(&format!("{}.running_mean", self.name), &mut self.running_mean);
        f(&format!("{}.running_var", self.name), &mut self.running_var);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{CheckOptions, check_layer};
    use lsc_tensor::Rng;

    fn randomized(c: usize, rng: &mut Rng) -> BatchNorm {
        let mut bn = BatchNorm::new("bn", c, 2e-5, 0.1);
        bn.weight.value = Tensor::uniform(&[c], 0.5, 1.5, rng);
        bn.bias.value = Tensor::randn(&[c], 0.3, rng);
        bn
    }

    #[test]
    fn backward_matches_finite_differences_2d_and_1d() {
        let mut rng = Rng::new(4);
        let mut bn = randomized(3, &mut rng);
        let x = Tensor::randn(&[4, 3, 3, 2], 1.0, &mut rng);
        check_layer(&mut bn, &x, &CheckOptions::default()).unwrap();
        let mut bn = randomized(5, &mut rng);
        let x = Tensor::randn(&[6, 5], 2.0, &mut rng);
        check_layer(&mut bn, &x, &CheckOptions::default()).unwrap();
    }

    /// BN followed by PReLU through the fused passes, as one layer (for the gradient check).
    struct BnPrelu(BatchNorm, crate::PRelu);

    impl Layer for BnPrelu {
        fn forward(&mut self, x: &Tensor, mode: Mode) -> Tensor {
            let mut y = Tensor::default();
            let ep = Epilogue {
                prelu: Some(self.1.weight.value.data()),
                res: None,
            };
            self.0.forward_fused(x, mode, ep, &mut y);
            y
        }
        fn backward(&mut self, dy: &Tensor) -> Tensor {
            let mut dx = Tensor::default();
            self.0.backward_fused(dy, Some(&mut self.1.weight), None, &mut dx);
            dx
        }
        fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
            self.0.visit_params(f);
            self.1.visit_params(f);
        }
    }

    #[test]
    fn fused_bn_prelu_backward_matches_finite_differences() {
        let mut rng = Rng::new(12);
        for mode in [crate::PreluMode::PerChannel, crate::PreluMode::Shared] {
            // γ, β large against the kink: few pre-activations lie within ε of 0.
            let mut bn = randomized(3, &mut rng);
            bn.bias.value = Tensor::from_vec(&[3], vec![0.9, -0.8, 0.1]).unwrap();
            let mut p = crate::PRelu::new("prelu", 3, mode);
            p.weight.value.data_mut().fill(0.4);
            let mut l = BnPrelu(bn, p);
            // 19 elements per plane: the 8-lane loop and its remainder.
            let x = Tensor::randn(&[3, 3, 19], 1.0, &mut rng);
            let opts = CheckOptions {
                eps: 1e-3,
                atol: 3e-3,
                ..Default::default()
            };
            check_layer(&mut l, &x, &opts).unwrap();
        }
    }

    #[test]
    fn fused_passes_match_the_separate_layers() {
        let mut rng = Rng::new(13);
        let x = Tensor::randn(&[4, 3, 5, 3], 1.0, &mut rng);
        let res = Tensor::randn(&[4, 3, 5, 3], 1.0, &mut rng);
        let dy = Tensor::randn(&[4, 3, 5, 3], 1.0, &mut rng);
        let mut a = randomized(3, &mut rng);
        let mut b = randomized(3, &mut rng);
        b.weight.value = a.weight.value.clone();
        b.bias.value = a.bias.value.clone();
        let mut pa = crate::PRelu::new("p", 3, crate::PreluMode::PerChannel);
        pa.weight.value = Tensor::from_vec(&[3], vec![0.1, 0.25, -0.3]).unwrap();
        let mut pb = crate::PRelu::new("p", 3, crate::PreluMode::PerChannel);
        pb.weight.value = pa.weight.value.clone();
        for mode in [Mode::Train, Mode::Eval] {
            // BN → PReLU, then + residual.
            let mut y = Tensor::default();
            let ep = Epilogue {
                prelu: Some(pa.weight.value.data()),
                res: Some(&res),
            };
            a.forward_fused(&x, mode, ep, &mut y);
            let mut want = pb.forward(&b.forward(&x, mode), mode);
            want.add_assign(&res).unwrap();
            for (u, v) in y.data().iter().zip(want.data()) {
                assert!((u - v).abs() < 1e-5, "{mode:?}: {u} vs {v}");
            }
        }
        // Backward after a training forward of each (the residual's gradient is dy).
        let mut y = Tensor::default();
        let ep = Epilogue {
            prelu: Some(pa.weight.value.data()),
            res: None,
        };
        a.forward_fused(&x, Mode::Train, ep, &mut y);
        let _ = pb.forward(&b.forward(&x, Mode::Train), Mode::Train);
        let mut dx = Tensor::default();
        a.backward_fused(&dy, Some(&mut pa.weight), Some(&res), &mut dx);
        let mut want = b.backward(&pb.backward(&dy));
        want.add_assign(&res).unwrap();
        for (u, v) in dx.data().iter().zip(want.data()) {
            assert!((u - v).abs() < 1e-4, "dx: {u} vs {v}");
        }
        for (u, v) in [
            (&a.weight.grad, &b.weight.grad),
            (&a.bias.grad, &b.bias.grad),
            (&pa.weight.grad, &pb.weight.grad),
        ] {
            for (p, q) in u.data().iter().zip(v.data()) {
                assert!((p - q).abs() < 1e-4, "param grad: {p} vs {q}");
            }
        }
    }

    #[test]
    fn eval_forward_leaves_the_training_cache_alone() {
        let mut rng = Rng::new(14);
        let mut a = randomized(2, &mut rng);
        let x = Tensor::randn(&[3, 2, 4], 1.0, &mut rng);
        let dy = Tensor::randn(&[3, 2, 4], 1.0, &mut rng);
        let _ = a.forward(&x, Mode::Train);
        let d1 = {
            let mut b = randomized(2, &mut Rng::new(0));
            b.weight.value = a.weight.value.clone();
            b.bias.value = a.bias.value.clone();
            let _ = b.forward(&x, Mode::Train);
            b.backward(&dy)
        };
        let _ = a.forward(&Tensor::randn(&[5, 2, 4], 3.0, &mut rng), Mode::Eval);
        assert_eq!(a.backward(&dy), d1);
    }

    #[test]
    fn statistics_survive_a_large_mean() {
        let mut rng = Rng::new(11);
        let mut bn = BatchNorm::new("bn", 1, 2e-5, 1.0);
        let mut x = Tensor::randn(&[16, 1, 5, 5], 1.0, &mut rng);
        for v in x.data_mut() {
            *v += 1e4;
        }
        let y = bn.forward(&x, Mode::Train);
        let var: f64 = y.data().iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / 400.0;
        assert!((var - 1.0).abs() < 0.02, "normalised variance {var}");
    }

    #[test]
    fn train_normalises_and_eval_uses_running_stats() {
        let mut rng = Rng::new(5);
        let mut bn = BatchNorm::new("bn", 2, 2e-5, 1.0);
        let x = Tensor::randn(&[8, 2, 2, 2], 3.0, &mut rng);
        let y = bn.forward(&x, Mode::Train);
        for ch in 0..2 {
            let v: Vec<f32> = (0..8)
                .flat_map(|n| y.data()[(n * 2 + ch) * 4..(n * 2 + ch) * 4 + 4].to_vec())
                .collect();
            let m: f32 = v.iter().sum::<f32>() / 32.0;
            let var: f32 = v.iter().map(|a| (a - m).powi(2)).sum::<f32>() / 32.0;
            assert!(
                m.abs() < 1e-5 && (var - 1.0).abs() < 1e-3,
                "channel {ch}: mean {m} var {var}"
            );
        }
        // With momentum 1 the running stats are the batch stats (unbiased variance), so eval
        // on the same batch reproduces train up to the n/(n-1) factor.
        let ye = bn.forward(&x, Mode::Eval);
        let ratio = (31.0f32 / 32.0).sqrt();
        for (a, b) in y.data().iter().zip(ye.data()) {
            assert!((a * ratio - b).abs() < 1e-3, "{a} vs {b}");
        }
    }
}
