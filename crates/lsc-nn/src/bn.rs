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

impl Layer for BatchNorm {
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Tensor {
        let _t = crate::profile::scope("bn.fwd", 0.0);
        let (n, hw) = dims(x, self.c, &self.name);
        let c = self.c;
        let count = (n * hw) as f64;
        let (mean, inv_std): (Vec<f32>, Vec<f32>) = if mode == Mode::Train {
            // One pass of shifted sums (x − k, k = the channel's first value) keeps
            // E[(x−k)²] − E[x−k]² free of cancellation when the mean is large.
            let shift: Vec<f32> = (0..c).map(|ch| x.data()[ch * hw]).collect();
            let (s1, s2) = self.channel_sums2(x.data(), hw, |ch, p| plane_sums(p, shift[ch]));
            let mean: Vec<f64> = (0..c).map(|ch| shift[ch] as f64 + s1[ch] / count).collect();
            let var: Vec<f64> = (0..c)
                .map(|ch| (s2[ch] / count - (s1[ch] / count).powi(2)).max(0.0))
                .collect();
            let m = self.momentum;
            let unbias = if count > 1.0 { count / (count - 1.0) } else { 1.0 };
            for ch in 0..c {
                let rm = &mut self.running_mean.data_mut()[ch];
                *rm = (1.0 - m) * *rm + m * mean[ch] as f32;
                let rv = &mut self.running_var.data_mut()[ch];
                *rv = (1.0 - m) * *rv + m * (var[ch] * unbias) as f32;
            }
            (
                mean.iter().map(|&v| v as f32).collect(),
                var.iter()
                    .map(|&v| (1.0 / (v + self.eps as f64).sqrt()) as f32)
                    .collect(),
            )
        } else {
            (
                self.running_mean.data().to_vec(),
                self.running_var
                    .data()
                    .iter()
                    .map(|&v| 1.0 / (v + self.eps).sqrt())
                    .collect(),
            )
        };
        let gamma = self.weight.value.data();
        let beta = self.bias.value.data();
        let mut y = Tensor::zeros(x.shape());
        let train = mode == Mode::Train;
        if train {
            self.xhat.resize_zeroed(x.shape());
        }
        let xhat_buf = if train { self.xhat.data_mut() } else { &mut [][..] };
        let mut xh_chunks: Vec<Option<&mut [f32]>> = if train {
            xhat_buf.chunks_mut(hw.max(1)).map(Some).collect()
        } else {
            (0..n * c).map(|_| None).collect()
        };
        y.data_mut()
            .par_chunks_mut(hw.max(1))
            .zip(x.data().par_chunks(hw.max(1)))
            .zip(xh_chunks.par_iter_mut())
            .enumerate()
            .for_each(|(i, ((yp, xp), xh))| {
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
            });
        if train {
            self.inv_std = inv_std;
        }
        y
    }

    fn backward(&mut self, dy: &Tensor) -> Tensor {
        let _t = crate::profile::scope("bn.bwd", 0.0);
        assert_eq!(dy.shape(), self.xhat.shape(), "{}: output gradient shape", self.name);
        let (n, hw) = dims(dy, self.c, &self.name);
        let c = self.c;
        let count = (n * hw) as f64;
        let xhat = self.xhat.data();
        let planes: Vec<(f64, f64)> = dy
            .data()
            .par_chunks(hw.max(1))
            .zip(xhat.par_chunks(hw.max(1)))
            .map(|(d, h)| plane_dots(d, h))
            .collect();
        let (mut dsum, mut dxh) = (vec![0.0f64; c], vec![0.0f64; c]);
        for (i, (a, b)) in planes.iter().enumerate() {
            dsum[i % c] += a;
            dxh[i % c] += b;
        }
        for ch in 0..c {
            self.weight.grad.data_mut()[ch] += dxh[ch] as f32;
            self.bias.grad.data_mut()[ch] += dsum[ch] as f32;
        }
        let gamma = self.weight.value.data();
        let inv_std = &self.inv_std;
        let mut dx = Tensor::zeros(dy.shape());
        dx.data_mut()
            .par_chunks_mut(hw.max(1))
            .zip(dy.data().par_chunks(hw.max(1)))
            .zip(xhat.par_chunks(hw.max(1)))
            .enumerate()
            .for_each(|(i, ((dxp, dyp), hp))| {
                let ch = i % c;
                let k = gamma[ch] * inv_std[ch];
                let mb = (dsum[ch] / count) as f32;
                let mh = (dxh[ch] / count) as f32;
                for ((o, &d), &h) in dxp.iter_mut().zip(dyp).zip(hp) {
                    *o = k * (d - mb - h * mh);
                }
            });
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
