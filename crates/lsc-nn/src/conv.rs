//! 2-D convolution without bias: Winograd F(4×4, 3×3) for the 3×3 stride-1 convolutions
//! (forward and input gradient), im2col + GEMM over groups of images for the rest and for
//! the weight gradient. Scratch buffers are per thread and reused from call to call.

use crate::{Layer, Mode, Param};
use lsc_tensor::cpu::{
    ConvGeom, Par, Trans, col2im_ld, conv3x3_winograd, conv3x3_winograd_weight_grad, im2col_ld, matmul,
    winograd_weights,
};
use lsc_tensor::{Rng, Tensor};
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, Ordering};

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
/// count, so results are the same on any machine.
fn group_size(n: usize, cols: usize) -> usize {
    let want = TARGET_COLS.div_ceil(cols.max(1));
    want.min((n / 4).max(1)).clamp(1, n.max(1))
}

/// Column-matrix bytes per group of the weight-gradient pass (one group at a time).
const DW_COL_BYTES: usize = 32 << 20;

/// Images per group of the weight-gradient pass: as many as fit `DW_COL_BYTES` of columns.
fn dw_group_size(n: usize, rows: usize, cols: usize) -> usize {
    (DW_COL_BYTES / (4 * rows * cols).max(1)).clamp(1, n.max(1))
}

static WINOGRAD: AtomicU8 = AtomicU8::new(0);

/// Turns Winograd F(4×4, 3×3) on or off for every eligible convolution of the process
/// (3×3, stride 1, padding 1, see [`Conv2d::uses_winograd`]); on by default, off when the
/// environment sets `LSC_WINOGRAD=0`. Both paths compute the same convolution.
pub fn set_winograd(on: bool) {
    WINOGRAD.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

fn winograd_enabled() -> bool {
    match WINOGRAD.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var("LSC_WINOGRAD").map_or(true, |v| v != "0");
            set_winograd(on);
            on
        }
        v => v == 2,
    }
}

/// Winograd pays once the GEMMs have enough work per transform: at least this many input
/// and output channels, and planes of at least `WINOGRAD_MIN_HW` pixels (measured with
/// `cargo xtask bench-backbone`; below them im2col + GEMM is as fast).
const WINOGRAD_MIN_CHANNELS: usize = 16;
const WINOGRAD_MIN_HW: usize = 4 * 4;

thread_local! {
    /// Per-thread scratch of the GEMM paths (column matrices, gathered output blocks) and
    /// of the Winograd weight transform, reused from call to call.
    static COLS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    static WINO_U: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch in `key`, or on a fresh one when it is already in use
/// (a rayon worker that stole a second convolution while waiting inside the first).
fn with_scratch<T: Default + 'static, R>(
    key: &'static std::thread::LocalKey<RefCell<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut T::default()),
    })
}

/// `v[..n]` of a scratch vector, grown (never shrunk) to at least `n`.
fn grown(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

impl Conv2d {
    /// True when this convolution runs as Winograd F(4×4, 3×3) on an `h × w` input (forward
    /// and input gradient): 3×3, stride 1, padding 1, wide enough, and not turned off.
    pub fn uses_winograd(&self, h: usize, w: usize) -> bool {
        self.k == 3
            && self.stride == 1
            && self.pad == 1
            && self.cin >= WINOGRAD_MIN_CHANNELS
            && self.cout >= WINOGRAD_MIN_CHANNELS
            && h * w >= WINOGRAD_MIN_HW
            && winograd_enabled()
    }

    /// The output, caching nothing (what `forward` computes in either mode).
    pub fn infer(&self, x: &Tensor) -> Tensor {
        let mut y = Tensor::default();
        self.infer_into(x, &mut y);
        y
    }

    /// [`Conv2d::infer`] into `y` (resized, its allocation reused).
    pub fn infer_into(&self, x: &Tensor, y: &mut Tensor) {
        let g = self.geom(x);
        let n = x.dim(0);
        let _t = crate::profile::scope("conv.fwd", (n * self.flops(g.h, g.w)) as f64);
        let cout = self.cout;
        crate::buf::reshape(y, &[n, cout, g.out_h(), g.out_w()]);
        let w = self.weight.value.data();
        if self.uses_winograd(g.h, g.w) {
            with_scratch(&WINO_U, |u| {
                winograd_weights(w, cout, self.cin, false, u);
                conv3x3_winograd(x.data(), n, self.cin, g.h, g.w, u, cout, y.data_mut());
            });
            return;
        }
        let (rows, cols) = (g.col_rows(), g.col_cols());
        let in_sz = g.c * g.h * g.w;
        let gs = group_size(n, cols);
        // Each group of images: columns side by side in one [rows, m·cols] matrix, one GEMM
        // into [cout, m·cols], then scattered to NCHW.
        y.data_mut()
            .par_chunks_mut(gs * cout * cols)
            .zip(x.data().par_chunks(gs * in_sz))
            .for_each(|(yg, xg)| {
                let m = xg.len() / in_sz;
                let ld = m * cols;
                if m == 1 && g.is_identity() {
                    matmul(Trans::N, Trans::N, cout, cols, rows, w, xg, yg, false, Par::Seq);
                    return;
                }
                with_scratch(&COLS, |(col, tmp)| {
                    let col = grown(col, rows * ld);
                    for (j, img) in xg.chunks(in_sz).enumerate() {
                        im2col_ld(img, &g, &mut col[j * cols..], ld);
                    }
                    if m == 1 {
                        matmul(Trans::N, Trans::N, cout, cols, rows, w, col, yg, false, Par::Seq);
                        return;
                    }
                    let tmp = grown(tmp, cout * ld);
                    matmul(Trans::N, Trans::N, cout, ld, rows, w, col, tmp, false, Par::Seq);
                    for (j, yi) in yg.chunks_mut(cout * cols).enumerate() {
                        for (co, yr) in yi.chunks_mut(cols).enumerate() {
                            yr.copy_from_slice(&tmp[co * ld + j * cols..co * ld + (j + 1) * cols]);
                        }
                    }
                });
            });
    }

    /// The backward pass for input `x` and output gradient `dy`: adds dL/dW into the weight
    /// gradient and, when `dx` is given, writes dL/dx into it (resized).
    pub fn backward_from(&mut self, x: &Tensor, dy: &Tensor, dx: Option<&mut Tensor>) {
        let g = self.geom(x);
        let n = x.dim(0);
        assert_eq!(
            dy.shape(),
            &[n, self.cout, g.out_h(), g.out_w()],
            "{}: output gradient shape",
            self.weight.name
        );
        self.backward_weight(x, dy, &g);
        if let Some(dx) = dx {
            self.backward_data(dy, &g, n, dx);
        }
    }

    /// dL/dx alone into `dx` (for benchmarks: what `backward_from` adds besides dW), for an
    /// input shaped like `x`.
    pub fn input_grad_into(&self, dy: &Tensor, x: &Tensor, dx: &mut Tensor) {
        let g = self.geom(x);
        self.backward_data(dy, &g, x.dim(0), dx);
    }

    /// dW += dY · colᵀ (or its Winograd form where eligible), one group of images at a time (groups in order, each GEMM parallel
    /// over the output), so the sum's order depends on the shapes alone.
    fn backward_weight(&mut self, x: &Tensor, dy: &Tensor, g: &ConvGeom) {
        let n = x.dim(0);
        let _t = crate::profile::scope("conv.bwd_weight", (n * self.flops(g.h, g.w)) as f64);
        let (rows, cols) = (g.col_rows(), g.col_cols());
        let in_sz = g.c * g.h * g.w;
        let cout = self.cout;
        let (dyd, xd) = (dy.data(), x.data());
        if self.uses_winograd(g.h, g.w) {
            let dw = self.weight.grad.data_mut();
            conv3x3_winograd_weight_grad(xd, dyd, n, self.cin, cout, g.h, g.w, dw);
            return;
        }
        let gs = dw_group_size(n, rows, cols);
        let dw = self.weight.grad.data_mut();
        with_scratch(&COLS, |(col, dyg)| {
            let mut lo = 0;
            while lo < n {
                let m = gs.min(n - lo);
                let xg = &xd[lo * in_sz..(lo + m) * in_sz];
                let dyc = &dyd[lo * cout * cols..(lo + m) * cout * cols];
                let ld = m * cols;
                let colm: &[f32] = if m == 1 && g.is_identity() {
                    xg
                } else {
                    let col = grown(col, rows * ld);
                    // Blocks of input channels in parallel: each block's rows of the column
                    // matrix, for every image of the group.
                    let kk = g.kh * g.kw;
                    let cpb = g.c.div_ceil(16);
                    col.par_chunks_mut(cpb * kk * ld).enumerate().for_each(|(b, cb)| {
                        let c0 = b * cpb;
                        let sub = ConvGeom {
                            c: cb.len() / (kk * ld),
                            ..*g
                        };
                        let plane = g.h * g.w;
                        for (j, img) in xg.chunks(in_sz).enumerate() {
                            let part = &img[c0 * plane..(c0 + sub.c) * plane];
                            im2col_ld(part, &sub, &mut cb[j * cols..], ld);
                        }
                    });
                    col
                };
                // dY of the group as one [cout, m·cols] matrix.
                let dym: &[f32] = if m == 1 {
                    dyc
                } else {
                    let dyg = grown(dyg, cout * ld);
                    dyg.par_chunks_mut(ld).enumerate().for_each(|(co, row)| {
                        for (j, r) in row.chunks_mut(cols).enumerate() {
                            r.copy_from_slice(&dyc[(j * cout + co) * cols..(j * cout + co + 1) * cols]);
                        }
                    });
                    dyg
                };
                matmul(Trans::N, Trans::T, cout, rows, ld, dym, colm, dw, true, Par::Rayon);
                lo += m;
            }
        });
    }

    /// dX: Winograd with the flipped, transposed kernel where eligible, else dcol = Wᵀ·dY
    /// scattered back by col2im, groups of images in parallel.
    fn backward_data(&self, dy: &Tensor, g: &ConvGeom, n: usize, dx: &mut Tensor) {
        let _t = crate::profile::scope("conv.bwd_data", (n * self.flops(g.h, g.w)) as f64);
        let (rows, cols) = (g.col_rows(), g.col_cols());
        let in_sz = g.c * g.h * g.w;
        let cout = self.cout;
        let w = self.weight.value.data();
        if self.uses_winograd(g.h, g.w) {
            crate::buf::reshape(dx, &[n, g.c, g.h, g.w]);
            with_scratch(&WINO_U, |u| {
                winograd_weights(w, cout, self.cin, true, u);
                conv3x3_winograd(dy.data(), n, cout, g.h, g.w, u, self.cin, dx.data_mut());
            });
            return;
        }
        // col2im adds into dx.
        dx.resize_zeroed(&[n, g.c, g.h, g.w]);
        let gs = group_size(n, cols);
        let dyd = dy.data();
        dx.data_mut()
            .par_chunks_mut(gs * in_sz)
            .enumerate()
            .for_each(|(gi, dxg)| {
                let lo = gi * gs;
                let m = dxg.len() / in_sz;
                let dyc = &dyd[lo * cout * cols..(lo + m) * cout * cols];
                let ld = m * cols;
                if m == 1 && g.is_identity() {
                    matmul(Trans::T, Trans::N, rows, cols, cout, w, dyc, dxg, false, Par::Seq);
                    return;
                }
                with_scratch(&COLS, |(col, dyg)| {
                    let dym: &[f32] = if m == 1 {
                        dyc
                    } else {
                        let dyg = grown(dyg, cout * ld);
                        for (j, di) in dyc.chunks(cout * cols).enumerate() {
                            for (co, dr) in di.chunks(cols).enumerate() {
                                dyg[co * ld + j * cols..co * ld + (j + 1) * cols].copy_from_slice(dr);
                            }
                        }
                        dyg
                    };
                    let col = grown(col, rows * ld);
                    matmul(Trans::T, Trans::N, rows, ld, cout, w, dym, col, false, Par::Seq);
                    for (j, dxi) in dxg.chunks_mut(in_sz).enumerate() {
                        col2im_ld(&col[j * cols..], g, dxi, ld);
                    }
                });
            });
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
        let x = std::mem::take(&mut self.x);
        let mut dx = Tensor::default();
        let want = self.input_grad;
        self.backward_from(&x, dy, want.then_some(&mut dx));
        self.x = x;
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
    fn winograd_convolution_matches_direct_and_finite_differences() {
        let mut rng = Rng::new(4);
        // 16 channels: eligible; ragged 6×5 planes (tiles cross the edge).
        let mut c = Conv2d::new("c", 16, 17, 3, 1, 1, &mut rng);
        assert!(c.uses_winograd(6, 5));
        let x = Tensor::randn(&[3, 16, 6, 5], 1.0, &mut rng);
        let y = c.forward(&x, Mode::Eval);
        let g = c.geom(&x);
        let r = conv2d_ref(x.data(), c.weight.value.data(), 3, &g, 17);
        let scale = r.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
        for (a, b) in y.data().iter().zip(&r) {
            assert!((a - b).abs() < 1e-4 * scale, "{a} vs {b}");
        }
        let opts = CheckOptions {
            eps: 1e-2,
            atol: 3e-3,
            rtol: 1e-2,
            max_checks: 40,
            seed: 3,
        };
        check_layer(&mut c, &x, &opts).unwrap();
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
