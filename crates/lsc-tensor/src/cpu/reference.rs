//! Plain reference kernels: the specification the fast kernels are tested against.
//! Simple loops, f64 accumulation, no parallelism.

use super::Trans;

/// Reference for [`super::matmul`].
pub fn matmul_ref(
    ta: Trans,
    tb: Trans,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    accumulate: bool,
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for p in 0..k {
                let av = match ta {
                    Trans::N => a[i * k + p],
                    Trans::T => a[p * m + i],
                };
                let bv = match tb {
                    Trans::N => b[p * n + j],
                    Trans::T => b[j * k + p],
                };
                s += av as f64 * bv as f64;
            }
            let old = if accumulate { c[i * n + j] as f64 } else { 0.0 };
            c[i * n + j] = (old + s) as f32;
        }
    }
}

/// Direct 2-D convolution, NCHW input `[n, c, h, w]`, weight `[co, c, kh, kw]`, no bias.
/// Returns the `[n, co, oh, ow]` output.
pub fn conv2d_ref(x: &[f32], w: &[f32], n: usize, g: &super::ConvGeom, co: usize) -> Vec<f32> {
    let (oh, ow) = (g.out_h(), g.out_w());
    let mut out = vec![0.0f32; n * co * oh * ow];
    for b in 0..n {
        for o in 0..co {
            for y in 0..oh {
                for xo in 0..ow {
                    let mut s = 0.0f64;
                    for ci in 0..g.c {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (y * g.stride + ky) as isize - g.pad as isize;
                                let ix = (xo * g.stride + kx) as isize - g.pad as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xv = x[((b * g.c + ci) * g.h + iy as usize) * g.w + ix as usize];
                                let wv = w[((o * g.c + ci) * g.kh + ky) * g.kw + kx];
                                s += xv as f64 * wv as f64;
                            }
                        }
                    }
                    out[((b * co + o) * oh + y) * ow + xo] = s as f32;
                }
            }
        }
    }
    out
}
