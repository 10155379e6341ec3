//! 2-D convolution without bias, as im2col + GEMM per image, images in parallel.

use crate::{Layer, Mode, Param};
use lsc_tensor::cpu::{ConvGeom, Par, Trans, col2im, im2col, matmul};
use lsc_tensor::{Rng, Tensor};
use rayon::prelude::*;

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

impl Layer for Conv2d {
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Tensor {
        let g = self.geom(x);
        let n = x.dim(0);
        let (rows, cols) = (g.col_rows(), g.col_cols());
        let in_sz = g.c * g.h * g.w;
        let mut y = Tensor::zeros(&[n, self.cout, g.out_h(), g.out_w()]);
        let w = self.weight.value.data();
        let cout = self.cout;
        y.data_mut()
            .par_chunks_mut(cout * cols)
            .zip(x.data().par_chunks(in_sz))
            .for_each_init(
                || vec![0.0f32; if g.is_identity() { 0 } else { rows * cols }],
                |col, (out, img)| {
                    let colm: &[f32] = if g.is_identity() {
                        img
                    } else {
                        im2col(img, &g, col);
                        col
                    };
                    matmul(Trans::N, Trans::N, cout, cols, rows, w, colm, out, false, Par::Seq);
                },
            );
        if mode == Mode::Train {
            self.x.clone_from(x);
        }
        y
    }

    fn backward(&mut self, dy: &Tensor) -> Tensor {
        let x = &self.x;
        let g = self.geom(x);
        let n = x.dim(0);
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
        let mut dx = if want_dx {
            Tensor::zeros(x.shape())
        } else {
            Tensor::default()
        };
        let dx_chunks: Vec<Option<&mut [f32]>> = if want_dx {
            dx.data_mut().chunks_mut(in_sz).map(Some).collect()
        } else {
            (0..n).map(|_| None).collect()
        };
        // Each fold state owns a partial dW and a column buffer; the partials are summed after.
        let dw = dy
            .data()
            .par_chunks(cout * cols)
            .zip(x.data().par_chunks(in_sz))
            .zip(dx_chunks.into_par_iter())
            .fold(
                || (vec![0.0f32; cout * rows], vec![0.0f32; rows * cols]),
                |(mut dw, mut col), ((dyi, img), dxi)| {
                    let colm: &[f32] = if g.is_identity() {
                        img
                    } else {
                        im2col(img, &g, &mut col);
                        &col
                    };
                    // dW += dY · colᵀ
                    matmul(Trans::N, Trans::T, cout, rows, cols, dyi, colm, &mut dw, true, Par::Seq);
                    if let Some(dxi) = dxi {
                        if g.is_identity() {
                            matmul(Trans::T, Trans::N, rows, cols, cout, w, dyi, dxi, false, Par::Seq);
                        } else {
                            // dcol = Wᵀ · dY, then scatter back to the image.
                            matmul(Trans::T, Trans::N, rows, cols, cout, w, dyi, &mut col, false, Par::Seq);
                            col2im(&col, &g, dxi);
                        }
                    }
                    (dw, col)
                },
            )
            .map(|(dw, _)| dw)
            .reduce_with(|mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    *x += y;
                }
                a
            });
        if let Some(dw) = dw {
            for (g, d) in self.weight.grad.data_mut().iter_mut().zip(&dw) {
                *g += d;
            }
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
            let x = Tensor::randn(&[3, cin, h, h], 1.0, &mut rng);
            let y = c.forward(&x, Mode::Eval);
            let g = c.geom(&x);
            let r = conv2d_ref(x.data(), c.weight.value.data(), 3, &g, cout);
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
            let x = Tensor::randn(&[2, cin, h, h], 1.0, &mut rng);
            check_layer(&mut c, &x, &CheckOptions::default()).unwrap();
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
