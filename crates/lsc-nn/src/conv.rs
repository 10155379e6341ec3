//! 2-D convolution without bias, as im2col + GEMM over groups of images, groups in parallel.

use crate::{Layer, Mode, Param};
use lsc_tensor::cpu::par::ordered_fold;
use lsc_tensor::cpu::{ConvGeom, Par, Trans, col2im_ld, im2col_ld, matmul};
use lsc_tensor::{Rng, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// Convolution `[N, cin, H, W] -> [N, cout, OH, OW]`, square kernel, stride and zero padding.
pub struct Conv2d {
    pub weight: Param,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    /// When false, backward skips dL/dx (the first layer of a network needs none).
    pub input_grad: bool,
    x: Tensor,
}

impl Conv2d {
    /// He-normal init on fan-out, std = sqrt(2 / (cout·k·k)), as PLSC's Xavier(fan_in=0).
    pub fn new(name: &str, cin: usize, cout: usize, k: usize, stride: usize, pad: usize, rng: &mut Rng) -> Conv2d {
        let std = (2.0 / (cout * k * k) as f32).sqrt();
        Conv2d {
            weight: Param::new(format!("{name}.weight"), Tensor::randn(&[cout, cin, k, k], std, rng)),
            cin,
            cout,
            k,
            stride,
            pad,
            input_grad: true,
            x: Tensor::default(),
        }
    }

    /// A convolution with the given weight `[cout, cin, k, k]` (k × k square).
    pub fn from_weight(name: &str, weight: Tensor, stride: usize, pad: usize) -> Conv2d {
        let s = weight.shape().to_vec();
        assert!(
            s.len() == 4 && s[2] == s[3],
            "{name}: a conv weight is [cout, cin, k, k], got {s:?}"
        );
        Conv2d {
            weight: Param::new(format!("{name}.weight"), weight),
            cin: s[1],
            cout: s[0],
            k: s[2],
            stride,
            pad,
            input_grad: true,
            x: Tensor::default(),
        }
    }

    /// (input channels, output channels, kernel side, stride, padding).
    pub fn geometry(&self) -> (usize, usize, usize, usize, usize) {
        (self.cin, self.cout, self.k, self.stride, self.pad)
    }

    fn geom(&self, x: &Tensor) -> ConvGeom {
        assert_eq!(
            x.shape().len(),
            4,
            "{}: expected NCHW input, got {:?}",
            self.weight.name,
            x.shape()
        );
        assert_eq!(
            x.dim(1),
            self.cin,
            "{}: expected {} input channels, got {:?}",
            self.weight.name,
            self.cin,
            x.shape()
        );
        ConvGeom {
            c: self.cin,
            h: x.dim(2),
            w: x.dim(3),
            kh: self.k,
            kw: self.k,
            stride: self.stride,
            pad: self.pad,
        }
    }

    /// Forward FLOPs for one image of `h × w` input.
    pub fn flops(&self, h: usize, w: usize) -> usize {
        let oh = (h + 2 * self.pad - self.k) / self.stride + 1;
        let ow = (w + 2 * self.pad - self.k) / self.stride + 1;
        2 * self.cout * self.cin * self.k * self.k * oh * ow
    }
}

/// A GEMM should span at least this many output columns to run near the kernel's peak.
const TARGET_COLS: usize = 256;

/// Images per GEMM: enough for `TARGET_COLS` columns, but at most a quarter of the batch so
/// that several groups run in parallel. It depends on the shapes only, never on the thread
/// count, so the weight-gradient sums are the same on any machine.
fn group_size(n: usize, cols: usize) -> usize {
    let want = TARGET_COLS.div_ceil(cols.max(1));
    want.min((n / 4).max(1)).clamp(1, n.max(1))
}

impl Conv2d {
    /// The output, caching nothing (what `forward` computes in either mode).
    pub fn infer(&self, x: &Tensor) -> Tensor {
        let g = self.geom(x);
        let n = x.dim(0);
        let _t = crate::profile::scope("conv.fwd", (n * self.flops(g.h, g.w)) as f64);
        let (rows, cols) = (g.col_rows(), g.col_cols());
        let in_sz = g.c * g.h * g.w;
        let cout = self.cout;
        let mut y = Tensor::zeros(&[n, cout, g.out_h(), g.out_w()]);
        let w = self.weight.value.data();
        let gs = group_size(n, cols);
        // Each group of images: columns side by side in one [rows, m·cols] matrix, one GEMM
        // into [cout, m·cols], then scattered to NCHW.
        y.data_mut()
            .par_chunks_mut(gs * cout * cols)
            .zip(x.data().par_chunks(gs * in_sz))
            .for_each_init(
                || {
                    (
                        vec![0.0f32; rows * gs * cols],
                        vec![0.0f32; if gs > 1 { cout * gs * cols } else { 0 }],
                    )
                },
                |(col, tmp), (yg, xg)| {
                    let m = xg.len() / in_sz;
                    let ld = m * cols;
                    if m == 1 && g.is_identity() {
                        matmul(Trans::N, Trans::N, cout, cols, rows, w, xg, yg, false, Par::Seq);
                        return;
                    }
                    for (j, img) in xg.chunks(in_sz).enumerate() {
                        im2col_ld(img, &g, &mut col[j * cols..], ld);
                    }
                    if m == 1 {
                        matmul(Trans::N, Trans::N, cout, cols, rows, w, col, yg, false, Par::Seq);
                        return;
                    }
                    matmul(Trans::N, Trans::N, cout, ld, rows, w, col, tmp, false, Par::Seq);
                    for (j, yi) in yg.chunks_mut(cout * cols).enumerate() {
                        for (co, yr) in yi.chunks_mut(cols).enumerate() {
                            yr.copy_from_slice(&tmp[co * ld + j * cols..co * ld + (j + 1) * cols]);
                        }
                    }
                },
            );
        y
    }
}

impl Layer for Conv2d {
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Tensor {
        let y = self.infer(x);
        if mode == Mode::Train {
            self.x.clone_from(x);
        }
        y
    }

    fn backward(&mut self, dy: &Tensor) -> Tensor {
        let x = &self.x;
        let g = self.geom(x);
        let n = x.dim(0);
        let passes = if self.input_grad { 2 } else { 1 };
        let _t = crate::profile::scope("conv.bwd", (passes * n * self.flops(g.h, g.w)) as f64);
        let (rows, cols) = (g.col_rows(), g.col_cols());
        let in_sz = g.c * g.h * g.w;
        let cout = self.cout;
        assert_eq!(
            dy.shape(),
            &[n, cout, g.out_h(), g.out_w()],
            "{}: output gradient shape",
            self.weight.name
        );
        let w = self.weight.value.data();
        let want_dx = self.input_grad;
        let gs = group_size(n, cols);
        let mut dx = if want_dx {
            Tensor::zeros(x.shape())
        } else {
            Tensor::default()
        };
        let groups = n.div_ceil(gs);
        let dx_slots: Vec<Mutex<&mut [f32]>> = if want_dx {
            dx.data_mut().chunks_mut(gs * in_sz).map(Mutex::new).collect()
        } else {
            Vec::new()
        };
        let (dyd, xd) = (dy.data(), x.data());
        // Groups fold into a fixed set of partial dW sums (deterministic order, see
        // `ordered_fold`); each group also writes its own slice of dx.
        let (dw, _, _) = ordered_fold(
            groups,
            || {
                (
                    vec![0.0f32; cout * rows],
                    vec![0.0f32; rows * gs * cols],
                    vec![0.0f32; if gs > 1 { cout * gs * cols } else { 0 }],
                )
            },
            |(mut dw, mut col, mut dyg), gi| {
                let lo = gi * gs;
                let m = gs.min(n - lo);
                let xg = &xd[lo * in_sz..(lo + m) * in_sz];
                let dyc = &dyd[lo * cout * cols..(lo + m) * cout * cols];
                let ld = m * cols;
                let direct = m == 1 && g.is_identity();
                if !direct {
                    for (j, img) in xg.chunks(in_sz).enumerate() {
                        im2col_ld(img, &g, &mut col[j * cols..], ld);
                    }
                }
                let colm: &[f32] = if direct { xg } else { &col };
                // dY of the group as one [cout, m·cols] matrix.
                let dym: &[f32] = if m == 1 {
                    dyc
                } else {
                    for (j, di) in dyc.chunks(cout * cols).enumerate() {
                        for (co, dr) in di.chunks(cols).enumerate() {
                            dyg[co * ld + j * cols..co * ld + (j + 1) * cols].copy_from_slice(dr);
                        }
                    }
                    &dyg
                };
                // dW += dY · colᵀ
                matmul(Trans::N, Trans::T, cout, rows, ld, dym, colm, &mut dw, true, Par::Seq);
                if let Some(slot) = dx_slots.get(gi) {
                    let mut dxg = slot.lock().unwrap_or_else(|e| e.into_inner());
                    if direct {
                        matmul(Trans::T, Trans::N, rows, cols, cout, w, dym, &mut dxg, false, Par::Seq);
                    } else {
                        // dcol = Wᵀ · dY, then scattered back to each image.
                        matmul(Trans::T, Trans::N, rows, ld, cout, w, dym, &mut col, false, Par::Seq);
                        for (j, dxi) in dxg.chunks_mut(in_sz).enumerate() {
                            col2im_ld(&col[j * cols..], &g, dxi, ld);
                        }
                    }
                }
                (dw, col, dyg)
            },
            |mut a, b| {
                for (x, y) in a.0.iter_mut().zip(&b.0) {
                    *x += y;
                }
                a
            },
        );
        drop(dx_slots);
        for (g, d) in self.weight.grad.data_mut().iter_mut().zip(&dw) {
            *g += d;
        }
        dx
    }

    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{CheckOptions, check_layer};
    use lsc_tensor::cpu::reference::conv2d_ref;

    #[test]
    fn forward_matches_direct_convolution() {
        let mut rng = Rng::new(1);
        for &(cin, cout, k, s, p, h) in &[
            (3, 4, 3, 1, 1, 6),
            (2, 3, 3, 2, 1, 7),
            (4, 5, 1, 2, 0, 6),
            (3, 2, 1, 1, 0, 5),
        ] {
            let mut c = Conv2d::new("c", cin, cout, k, s, p, &mut rng);
            // 11 images: several groups of several images, and a ragged last group.
            let x = Tensor::randn(&[11, cin, h, h], 1.0, &mut rng);
            let y = c.forward(&x, Mode::Eval);
            let g = c.geom(&x);
            assert!(group_size(11, g.col_cols()) > 1);
            let r = conv2d_ref(x.data(), c.weight.value.data(), 11, &g, cout);
            for (a, b) in y.data().iter().zip(&r) {
                assert!((a - b).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = Rng::new(2);
        for &(cin, cout, k, s, p, h) in &[
            (2, 3, 3, 1, 1, 5),
            (3, 2, 3, 2, 1, 6),
            (3, 4, 1, 2, 0, 4),
            (2, 2, 1, 1, 0, 3),
        ] {
            let mut c = Conv2d::new("c", cin, cout, k, s, p, &mut rng);
            for n in [2, 9] {
                let x = Tensor::randn(&[n, cin, h, h], 1.0, &mut rng);
                check_layer(&mut c, &x, &CheckOptions::default()).unwrap();
            }
        }
    }

    #[test]
    fn skipping_input_grad_keeps_weight_grad() {
        let mut rng = Rng::new(3);
        let mut a = Conv2d::new("c", 2, 3, 3, 1, 1, &mut rng);
        let mut rng = Rng::new(3);
        let mut b = Conv2d::new("c", 2, 3, 3, 1, 1, &mut rng);
        b.input_grad = false;
        let x = Tensor::randn(&[2, 2, 4, 4], 1.0, &mut rng);
        let dy = Tensor::randn(&[2, 3, 4, 4], 1.0, &mut rng);
        a.forward(&x, Mode::Train);
        b.forward(&x, Mode::Train);
        assert_eq!(a.backward(&dy).shape(), x.shape());
        assert_eq!(b.backward(&dy).numel(), 0);
        assert_eq!(a.weight.grad, b.weight.grad);
    }
}
