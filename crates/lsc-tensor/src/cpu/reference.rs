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

/// Winograd F(4×4, 3×3) as written in the paper, one 4×4 tile at a time, in f64: the
/// specification of [`super::conv3x3_winograd`] (3×3, stride 1, padding 1; the output has
/// the input's `h × w`). Input `[n, cin, h, w]`, weight `[cout, cin, 3, 3]`.
pub fn winograd_ref(x: &[f32], w: &[f32], n: usize, cin: usize, h: usize, wd: usize, cout: usize) -> Vec<f32> {
    use super::winograd::{AT, BT, G};
    let mut out = vec![0.0f32; n * cout * h * wd];
    // U = G g Gᵀ for every kernel.
    let mut u = vec![[[0.0f64; 6]; 6]; cout * cin];
    for (k, uk) in u.iter_mut().enumerate() {
        let g = &w[k * 9..k * 9 + 9];
        for i in 0..6 {
            for j in 0..6 {
                let mut s = 0.0f64;
                for a in 0..3 {
                    for b in 0..3 {
                        s += G[i][a] as f64 * g[a * 3 + b] as f64 * G[j][b] as f64;
                    }
                }
                uk[i][j] = s;
            }
        }
    }
    for b in 0..n {
        for ty in 0..h.div_ceil(4) {
            for tx in 0..wd.div_ceil(4) {
                // V = Bᵀ d B per input channel.
                let mut v = vec![[[0.0f64; 6]; 6]; cin];
                for (ci, vc) in v.iter_mut().enumerate() {
                    let mut d = [[0.0f64; 6]; 6];
                    for (r, dr) in d.iter_mut().enumerate() {
                        for (c, dv) in dr.iter_mut().enumerate() {
                            let (iy, ix) = ((4 * ty + r) as isize - 1, (4 * tx + c) as isize - 1);
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                *dv = x[((b * cin + ci) * h + iy as usize) * wd + ix as usize] as f64;
                            }
                        }
                    }
                    for i in 0..6 {
                        for j in 0..6 {
                            let mut s = 0.0;
                            for r in 0..6 {
                                for c in 0..6 {
                                    s += BT[i][r] as f64 * d[r][c] * BT[j][c] as f64;
                                }
                            }
                            vc[i][j] = s;
                        }
                    }
                }
                for co in 0..cout {
                    let mut m = [[0.0f64; 6]; 6];
                    for ci in 0..cin {
                        for i in 0..6 {
                            for j in 0..6 {
                                m[i][j] += u[co * cin + ci][i][j] * v[ci][i][j];
                            }
                        }
                    }
                    for r in 0..4 {
                        for q in 0..4 {
                            let (oy, ox) = (4 * ty + r, 4 * tx + q);
                            if oy >= h || ox >= wd {
                                continue;
                            }
                            let mut s = 0.0;
                            for i in 0..6 {
                                for j in 0..6 {
                                    s += AT[r][i] as f64 * m[i][j] * AT[q][j] as f64;
                                }
                            }
                            out[((b * cout + co) * h + oy) * wd + ox] = s as f32;
                        }
                    }
                }
            }
        }
    }
    out
}
