//! im2col and col2im for one image, the building blocks of GEMM convolution.
//!
//! Layout: the column matrix of one `[c, h, w]` image is `[c·kh·kw, oh·ow]`, row-major, so a
//! convolution is `W[co, c·kh·kw] · col` and lands directly in `[co, oh·ow]` (NCHW) order.

/// The geometry of one 2-D convolution over one image (square stride and padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvGeom {
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.kh) / self.stride + 1
    }
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.kw) / self.stride + 1
    }
    /// Rows of the column matrix: `c·kh·kw`.
    pub fn col_rows(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Columns of the column matrix: `oh·ow`.
    pub fn col_cols(&self) -> usize {
        self.out_h() * self.out_w()
    }
    /// True when the column matrix is the image itself (1×1, stride 1, no padding).
    pub fn is_identity(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
}

/// The output columns `[x0, x1)` whose input column `x·stride + kx − pad` lies inside
/// `[0, w)`: outside them the column matrix holds padding zeros.
fn valid_cols(ow: usize, w: usize, stride: usize, kx: usize, pad: usize) -> (usize, usize) {
    // x·s + kx ≥ pad  ⇔  x ≥ ceil((pad − kx) / s)
    let x0 = if kx >= pad { 0 } else { (pad - kx).div_ceil(stride) };
    // x·s + kx − pad ≤ w − 1  ⇔  x ≤ (w − 1 + pad − kx) / s
    let x1 = if w + pad > kx {
        ((w - 1 + pad - kx) / stride + 1).min(ow)
    } else {
        0
    };
    (x0.min(x1), x1)
}

/// Writes the column matrix of `img` (`[c, h, w]`) into `col` (`[c·kh·kw, oh·ow]`).
pub fn im2col(img: &[f32], g: &ConvGeom, col: &mut [f32]) {
    assert_eq!(col.len(), g.col_rows() * g.col_cols(), "im2col: column length");
    im2col_ld(img, g, col, g.col_cols());
}

/// [`im2col`] into a matrix whose rows are `ld ≥ oh·ow` apart: row `r` of this image's
/// columns is `col[r·ld .. r·ld + oh·ow]`. Several images side by side in one matrix (each
/// starting at its own column offset) make one wide GEMM.
pub fn im2col_ld(img: &[f32], g: &ConvGeom, col: &mut [f32], ld: usize) {
    let (oh, ow) = (g.out_h(), g.out_w());
    assert_eq!(img.len(), g.c * g.h * g.w, "im2col: image length");
    assert!(
        ld >= oh * ow && col.len() >= (g.col_rows() - 1) * ld + oh * ow,
        "im2col: column matrix too small"
    );
    let mut row = 0;
    for ci in 0..g.c {
        let plane = &img[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let (x0, x1) = valid_cols(ow, g.w, g.stride, kx, g.pad);
                let dst = &mut col[row * ld..row * ld + oh * ow];
                for y in 0..oh {
                    let iy = (y * g.stride + ky) as isize - g.pad as isize;
                    let out_row = &mut dst[y * ow..(y + 1) * ow];
                    if iy < 0 || iy >= g.h as isize {
                        out_row.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    out_row[..x0].fill(0.0);
                    out_row[x1..].fill(0.0);
                    if x1 > x0 {
                        let start = x0 * g.stride + kx - g.pad;
                        if g.stride == 1 {
                            out_row[x0..x1].copy_from_slice(&src[start..start + (x1 - x0)]);
                        } else {
                            for (o, s) in out_row[x0..x1].iter_mut().zip(src[start..].iter().step_by(g.stride)) {
                                *o = *s;
                            }
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

/// Adds the column matrix `col` back into the image gradient `img` (the adjoint of [`im2col`]).
pub fn col2im(col: &[f32], g: &ConvGeom, img: &mut [f32]) {
    assert_eq!(col.len(), g.col_rows() * g.col_cols(), "col2im: column length");
    col2im_ld(col, g, img, g.col_cols());
}

/// [`col2im`] from a matrix whose rows are `ld` apart (the adjoint of [`im2col_ld`]).
pub fn col2im_ld(col: &[f32], g: &ConvGeom, img: &mut [f32], ld: usize) {
    let (oh, ow) = (g.out_h(), g.out_w());
    assert_eq!(img.len(), g.c * g.h * g.w, "col2im: image length");
    assert!(
        ld >= oh * ow && col.len() >= (g.col_rows() - 1) * ld + oh * ow,
        "col2im: column matrix too small"
    );
    let mut row = 0;
    for ci in 0..g.c {
        let plane = &mut img[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let (x0, x1) = valid_cols(ow, g.w, g.stride, kx, g.pad);
                let src = &col[row * ld..row * ld + oh * ow];
                for y in 0..oh {
                    let iy = (y * g.stride + ky) as isize - g.pad as isize;
                    if iy < 0 || iy >= g.h as isize || x1 <= x0 {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    let start = x0 * g.stride + kx - g.pad;
                    let vals = &src[y * ow + x0..y * ow + x1];
                    if g.stride == 1 {
                        for (d, v) in dst[start..start + vals.len()].iter_mut().zip(vals) {
                            *d += v;
                        }
                    } else {
                        for (d, v) in dst[start..].iter_mut().step_by(g.stride).zip(vals) {
                            *d += v;
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::reference::conv2d_ref;
    use crate::cpu::{Par, Trans, matmul};
    use crate::rng::Rng;

    fn geoms() -> Vec<ConvGeom> {
        let mut v = Vec::new();
        for &(c, h, w, k, s, p) in &[
            (3, 7, 7, 3, 1, 1),
            (2, 8, 6, 3, 2, 1),
            (4, 5, 5, 1, 2, 0),
            (1, 4, 4, 1, 1, 0),
            (2, 3, 5, 3, 1, 0),
            (2, 7, 7, 3, 2, 1),
            (1, 6, 5, 5, 2, 2),
            (2, 2, 2, 3, 2, 1),
            (1, 5, 5, 3, 3, 0),
        ] {
            v.push(ConvGeom {
                c,
                h,
                w,
                kh: k,
                kw: k,
                stride: s,
                pad: p,
            });
        }
        v
    }

    #[test]
    fn gemm_convolution_matches_direct() {
        let mut rng = Rng::new(5);
        for g in geoms() {
            let co = 3;
            let img: Vec<f32> = (0..g.c * g.h * g.w).map(|_| rng.normal()).collect();
            let w: Vec<f32> = (0..co * g.col_rows()).map(|_| rng.normal()).collect();
            let mut col = vec![0.0; g.col_rows() * g.col_cols()];
            im2col(&img, &g, &mut col);
            let mut out = vec![0.0; co * g.col_cols()];
            matmul(
                Trans::N,
                Trans::N,
                co,
                g.col_cols(),
                g.col_rows(),
                &w,
                &col,
                &mut out,
                false,
                Par::Seq,
            );
            let r = conv2d_ref(&img, &w, 1, &g, co);
            for (a, b) in out.iter().zip(&r) {
                assert!((a - b).abs() < 1e-4, "{g:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn strided_column_blocks_match_the_plain_ones() {
        let mut rng = Rng::new(7);
        for g in geoms() {
            let (rows, cols) = (g.col_rows(), g.col_cols());
            let imgs: Vec<Vec<f32>> = (0..3)
                .map(|_| (0..g.c * g.h * g.w).map(|_| rng.normal()).collect())
                .collect();
            let ld = 3 * cols;
            let mut wide = vec![0.0; rows * ld];
            for (j, img) in imgs.iter().enumerate() {
                im2col_ld(img, &g, &mut wide[j * cols..], ld);
            }
            for (j, img) in imgs.iter().enumerate() {
                let mut one = vec![0.0; rows * cols];
                im2col(img, &g, &mut one);
                for r in 0..rows {
                    assert_eq!(
                        &wide[r * ld + j * cols..r * ld + (j + 1) * cols],
                        &one[r * cols..(r + 1) * cols]
                    );
                }
                let (mut a, mut b) = (vec![0.0; img.len()], vec![0.0; img.len()]);
                col2im(&one, &g, &mut a);
                col2im_ld(&wide[j * cols..], &g, &mut b, ld);
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn col2im_is_adjoint_of_im2col() {
        // <im2col(x), y> == <x, col2im(y)> for all x, y.
        let mut rng = Rng::new(6);
        for g in geoms() {
            let x: Vec<f32> = (0..g.c * g.h * g.w).map(|_| rng.normal()).collect();
            let y: Vec<f32> = (0..g.col_rows() * g.col_cols()).map(|_| rng.normal()).collect();
            let mut col = vec![0.0; y.len()];
            im2col(&x, &g, &mut col);
            let mut back = vec![0.0; x.len()];
            col2im(&y, &g, &mut back);
            let lhs: f64 = col.iter().zip(&y).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
            let rhs: f64 = x.iter().zip(&back).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
            assert!((lhs - rhs).abs() < 1e-3 * (1.0 + lhs.abs()), "{g:?}: {lhs} vs {rhs}");
        }
    }
}
