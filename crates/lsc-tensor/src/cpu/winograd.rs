//! Winograd F(4×4, 3×3) for 3×3, stride-1, padding-1 convolutions (Lavin & Gray's
//! transforms, interpolation points 0, ±1, ±2, ∞).
//!
//! Each 4×4 output tile is `Aᵀ [Σ_ci (G g Gᵀ) ⊙ (Bᵀ d B)] A` over 6×6 input patches `d`, so
//! a convolution becomes 36 independent GEMMs `M_p[cout × T] = U_p[cout × cin] · V_p[cin × T]`
//! over the T tiles of a group of images: 36 multiplies per 16 outputs instead of 144, a
//! quarter of the direct FLOPs, plus the three transforms (each O(1) per element).
//!
//! Layouts (all row-major): transformed weights `U[co][p][ci]`, transformed input
//! `V[ci][p][t]`, products `M[co][p][t]`, so each phase writes one contiguous block per
//! channel (parallel without locks) and each GEMM reads and writes strided matrices.
//!
//! The backward-data pass of a 3×3 stride-1 pad-1 convolution is the same kind of
//! convolution of dY with the kernel transposed (`cin ↔ cout`) and flipped: see
//! [`winograd_weights`] with `transposed = true`.
//!
//! Accuracy: the transforms carry constants up to 8 and 1/24, so rounding grows with the
//! channel count about as the direct sum does, a few times larger; relative to the output's
//! scale the error measured against f64 direct convolution is below 1e-5 on unit-variance
//! data (the tests bound it by 1e-4).

use rayon::prelude::*;
use std::cell::RefCell;

/// Output tile side.
pub const TILE: usize = 4;
/// Input patch side (`TILE + 2`).
const PATCH: usize = 6;
/// Transform positions per tile (`PATCH²`).
pub const POSITIONS: usize = PATCH * PATCH;

/// Bᵀ (6×6): the input transform is `Bᵀ d B`.
pub const BT: [[f32; 6]; 6] = [
    [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
    [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
    [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
    [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
    [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
];
/// G (6×3): the weight transform is `G g Gᵀ`.
pub const G: [[f32; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];
/// Aᵀ (4×6): the output transform is `Aᵀ m A`.
pub const AT: [[f32; 6]; 4] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
    [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
];

/// Runs `$body(args)` compiled for AVX2 + FMA when the CPU has them, else for the baseline.
macro_rules! dispatch {
    ($avx:ident, $generic:ident, ($($arg:ident: $ty:ty),*)) => {{
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx($($arg: $ty),*) {
            $generic($($arg),*)
        }
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports the features this copy was compiled for.
                unsafe { $avx($($arg),*) };
                return;
            }
        }
        $generic($($arg),*)
    }};
}

/// Lanes of the weight transform: kernels transformed side by side.
const LANES: usize = 8;

/// `G g Gᵀ` for `LANES` kernels at once; `g[k][l]` is tap k (row-major 3×3) of kernel l.
#[inline(always)]
fn weight_tile(g: &[[f32; LANES]; 9], out: &mut [[f32; LANES]; POSITIONS]) {
    // t = G g (6×3), then u = t Gᵀ (6×6).
    let mut t = [[[0.0f32; LANES]; 3]; 6];
    for i in 0..6 {
        for c in 0..3 {
            for l in 0..LANES {
                t[i][c][l] = G[i][0] * g[c][l] + G[i][1] * g[3 + c][l] + G[i][2] * g[6 + c][l];
            }
        }
    }
    for i in 0..6 {
        for j in 0..6 {
            for l in 0..LANES {
                out[i * 6 + j][l] = t[i][0][l] * G[j][0] + t[i][1][l] * G[j][1] + t[i][2][l] * G[j][2];
            }
        }
    }
}

#[inline(always)]
fn weights_body(w: &[f32], cout: usize, cin: usize, transposed: bool, o: usize, dst: &mut [f32]) {
    // dst = U[o][p][i] for p in 0..36, i over the inner channels.
    let inner = if transposed { cout } else { cin };
    let mut g = [[0.0f32; LANES]; 9];
    let mut u = [[0.0f32; LANES]; POSITIONS];
    let mut i0 = 0;
    while i0 < inner {
        let lanes = LANES.min(inner - i0);
        for l in 0..LANES {
            let i = i0 + l.min(lanes - 1);
            for k in 0..9 {
                g[k][l] = if transposed {
                    // Kernel (ci = o, co = i), flipped.
                    w[(i * cin + o) * 9 + (8 - k)]
                } else {
                    w[(o * cin + i) * 9 + k]
                };
            }
        }
        weight_tile(&g, &mut u);
        for p in 0..POSITIONS {
            dst[p * inner + i0..p * inner + i0 + lanes].copy_from_slice(&u[p][..lanes]);
        }
        i0 += LANES;
    }
}

fn weights_one(w: &[f32], cout: usize, cin: usize, transposed: bool, o: usize, dst: &mut [f32]) {
    dispatch!(weights_avx2, weights_body, (w: &[f32], cout: usize, cin: usize, transposed: bool, o: usize, dst: &mut [f32]));
}

/// The transformed weights `U[o][p][i]` (`36·cout·cin` values) of a `[cout, cin, 3, 3]` kernel.
/// With `transposed`, those of the convolution that computes dX from dY: outer index `ci`,
/// inner `co`, each kernel flipped.
pub fn winograd_weights(w: &[f32], cout: usize, cin: usize, transposed: bool, u: &mut Vec<f32>) {
    assert_eq!(w.len(), cout * cin * 9, "winograd: weight length");
    let (outer, inner) = if transposed { (cin, cout) } else { (cout, cin) };
    u.clear();
    u.resize(outer * POSITIONS * inner, 0.0);
    u.par_chunks_mut(POSITIONS * inner)
        .enumerate()
        .for_each(|(o, dst)| weights_one(w, cout, cin, transposed, o, dst));
}

/// Geometry of one call: images in the group, channels, plane, tiles.
#[derive(Clone, Copy)]
struct Tiles {
    h: usize,
    w: usize,
    th: usize,
    tw: usize,
}

impl Tiles {
    fn new(h: usize, w: usize) -> Tiles {
        Tiles {
            h,
            w,
            th: h.div_ceil(TILE),
            tw: w.div_ceil(TILE),
        }
    }
    fn per_image(&self) -> usize {
        self.th * self.tw
    }
}

/// `V[p][t0 + ty·tw + tx]` of one channel plane of one image, for every tile.
/// `v` is this channel's `[36][T]` block (row length `tt`), `t0` the image's first tile.
#[inline(always)]
fn input_plane_body(plane: &[f32], g: Tiles, v: &mut [f32], tt: usize, t0: usize, scratch: &mut [f32]) {
    let (h, w, tw) = (g.h, g.w, g.tw);
    let wp = TILE * tw + 2; // padded row: column c holds x[c − 1]
    let (rows, rest) = scratch.split_at_mut(6 * wp);
    let (r, q) = rest.split_at_mut(6 * wp);
    let q = &mut q[..6 * tw];
    for ty in 0..g.th {
        // The six input rows of this tile row, zero-padded.
        for k in 0..6 {
            let row = &mut rows[k * wp..(k + 1) * wp];
            let iy = (TILE * ty + k) as isize - 1;
            if iy < 0 || iy >= h as isize {
                row.fill(0.0);
            } else {
                let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                row[0] = 0.0;
                row[1..1 + w].copy_from_slice(src);
                row[1 + w..].fill(0.0);
            }
        }
        // Vertical: r_i = Σ_k Bᵀ[i][k] · row_k.
        {
            let (r0, r1, r2, r3, r4, r5) = (
                &rows[0..wp],
                &rows[wp..2 * wp],
                &rows[2 * wp..3 * wp],
                &rows[3 * wp..4 * wp],
                &rows[4 * wp..5 * wp],
                &rows[5 * wp..6 * wp],
            );
            let (o0, rest) = r.split_at_mut(wp);
            let (o1, rest) = rest.split_at_mut(wp);
            let (o2, rest) = rest.split_at_mut(wp);
            let (o3, rest) = rest.split_at_mut(wp);
            let (o4, o5) = rest.split_at_mut(wp);
            for c in 0..wp {
                let (d0, d1, d2, d3, d4, d5) = (r0[c], r1[c], r2[c], r3[c], r4[c], r5[c]);
                o0[c] = 4.0 * d0 - 5.0 * d2 + d4;
                o1[c] = -4.0 * d1 - 4.0 * d2 + d3 + d4;
                o2[c] = 4.0 * d1 - 4.0 * d2 - d3 + d4;
                o3[c] = -2.0 * d1 - d2 + 2.0 * d3 + d4;
                o4[c] = 2.0 * d1 - d2 - 2.0 * d3 + d4;
                o5[c] = 4.0 * d1 - 5.0 * d3 + d5;
            }
        }
        // Horizontal, per r_i: the six columns of each tile, then Bᵀ along them.
        let base = t0 + ty * tw;
        for i in 0..6 {
            let ri = &r[i * wp..(i + 1) * wp];
            // q_k[tx] = r_i[4·tx + k]
            for tx in 0..tw {
                for k in 0..6 {
                    q[k * tw + tx] = ri[TILE * tx + k];
                }
            }
            let (q0, q1, q2, q3, q4, q5) = (
                &q[0..tw],
                &q[tw..2 * tw],
                &q[2 * tw..3 * tw],
                &q[3 * tw..4 * tw],
                &q[4 * tw..5 * tw],
                &q[5 * tw..6 * tw],
            );
            let row = |j: usize| (i * 6 + j) * tt + base;
            let (v0, v1, v2, v3, v4, v5) = (row(0), row(1), row(2), row(3), row(4), row(5));
            for tx in 0..tw {
                let (d0, d1, d2, d3, d4, d5) = (q0[tx], q1[tx], q2[tx], q3[tx], q4[tx], q5[tx]);
                v[v0 + tx] = 4.0 * d0 - 5.0 * d2 + d4;
                v[v1 + tx] = -4.0 * d1 - 4.0 * d2 + d3 + d4;
                v[v2 + tx] = 4.0 * d1 - 4.0 * d2 - d3 + d4;
                v[v3 + tx] = -2.0 * d1 - d2 + 2.0 * d3 + d4;
                v[v4 + tx] = 2.0 * d1 - d2 - 2.0 * d3 + d4;
                v[v5 + tx] = 4.0 * d1 - 5.0 * d3 + d5;
            }
        }
    }
}

#[inline(always)]
fn input_channel_body(x: &[f32], cin: usize, ci: usize, imgs: usize, g: Tiles, v: &mut [f32], tt: usize) {
    let hw = g.h * g.w;
    let wp = TILE * g.tw + 2;
    let mut scratch = vec![0.0f32; 12 * wp + 6 * g.tw];
    for j in 0..imgs {
        let plane = &x[(j * cin + ci) * hw..(j * cin + ci + 1) * hw];
        input_plane_body(plane, g, v, tt, j * g.per_image(), &mut scratch);
    }
}

fn input_channel(x: &[f32], cin: usize, ci: usize, imgs: usize, g: Tiles, v: &mut [f32], tt: usize) {
    dispatch!(input_avx2, input_channel_body, (x: &[f32], cin: usize, ci: usize, imgs: usize, g: Tiles, v: &mut [f32], tt: usize));
}

/// One output plane (channel `co` of image `j`) from `m` = this channel's `[36][T]` block.
#[inline(always)]
fn output_plane_body(m: &[f32], g: Tiles, tt: usize, t0: usize, y: &mut [f32], scratch: &mut [f32]) {
    let (h, w, tw) = (g.h, g.w, g.tw);
    // s[i][q][tx] = Σ_j Aᵀ[q][j] · m[i·6 + j][tx], then o[r][q][tx] = Σ_i Aᵀ[r][i] · s[i][q][tx].
    let (s, o) = scratch.split_at_mut(24 * tw);
    let o = &mut o[..16 * tw];
    for ty in 0..g.th {
        let base = t0 + ty * tw;
        for i in 0..6 {
            let row = |j: usize| &m[(i * 6 + j) * tt + base..(i * 6 + j) * tt + base + tw];
            let (m0, m1, m2, m3, m4, m5) = (row(0), row(1), row(2), row(3), row(4), row(5));
            let si = &mut s[i * 4 * tw..(i + 1) * 4 * tw];
            let (s0, rest) = si.split_at_mut(tw);
            let (s1, rest) = rest.split_at_mut(tw);
            let (s2, s3) = rest.split_at_mut(tw);
            for tx in 0..tw {
                let (a0, a1, a2, a3, a4, a5) = (m0[tx], m1[tx], m2[tx], m3[tx], m4[tx], m5[tx]);
                let (p12, m12, p34, m34) = (a1 + a2, a1 - a2, a3 + a4, a3 - a4);
                s0[tx] = a0 + p12 + p34;
                s1[tx] = m12 + 2.0 * m34;
                s2[tx] = p12 + 4.0 * p34;
                s3[tx] = m12 + 8.0 * m34 + a5;
            }
        }
        for q in 0..4 {
            let col = |i: usize| &s[(i * 4 + q) * tw..(i * 4 + q + 1) * tw];
            let (c0, c1, c2, c3, c4, c5) = (col(0), col(1), col(2), col(3), col(4), col(5));
            for tx in 0..tw {
                let (a0, a1, a2, a3, a4, a5) = (c0[tx], c1[tx], c2[tx], c3[tx], c4[tx], c5[tx]);
                let (p12, m12, p34, m34) = (a1 + a2, a1 - a2, a3 + a4, a3 - a4);
                o[q * tw + tx] = a0 + p12 + p34;
                o[(4 + q) * tw + tx] = m12 + 2.0 * m34;
                o[(8 + q) * tw + tx] = p12 + 4.0 * p34;
                o[(12 + q) * tw + tx] = m12 + 8.0 * m34 + a5;
            }
        }
        // Scatter the 4×4 tiles into the output rows.
        for r in 0..4 {
            let oy = TILE * ty + r;
            if oy >= h {
                break;
            }
            let dst = &mut y[oy * w..(oy + 1) * w];
            let full = w / TILE;
            for tx in 0..full {
                for q in 0..4 {
                    dst[TILE * tx + q] = o[(r * 4 + q) * tw + tx];
                }
            }
            for ox in TILE * full..w {
                dst[ox] = o[(r * 4 + ox % TILE) * tw + ox / TILE];
            }
        }
    }
}

#[inline(always)]
fn output_planes_body(m: &[f32], cout: usize, first: usize, g: Tiles, tt: usize, y: &mut [f32]) {
    let hw = g.h * g.w;
    let mut scratch = vec![0.0f32; 40 * g.tw];
    for (k, yp) in y.chunks_mut(hw).enumerate() {
        let i = first + k;
        let (j, co) = (i / cout, i % cout);
        let mc = &m[co * POSITIONS * tt..(co + 1) * POSITIONS * tt];
        output_plane_body(mc, g, tt, j * g.per_image(), yp, &mut scratch);
    }
}

fn output_planes(m: &[f32], cout: usize, first: usize, g: Tiles, tt: usize, y: &mut [f32]) {
    dispatch!(output_avx2, output_planes_body, (m: &[f32], cout: usize, first: usize, g: Tiles, tt: usize, y: &mut [f32]));
}

/// Pointers shared by the 36 GEMMs, which write disjoint strided matrices of `M`.
#[derive(Clone, Copy)]
struct GemmPtrs {
    u: *const f32,
    v: *const f32,
    m: *mut f32,
}
// SAFETY: only used inside `position_gemms`, where each task reads the shared inputs and writes
// the columns of its own transform position p, disjoint from every other task's.
unsafe impl Send for GemmPtrs {}
// SAFETY: as above.
unsafe impl Sync for GemmPtrs {}

impl GemmPtrs {
    /// The pointers, through a method so that a closure captures the whole `Send` struct.
    fn get(self) -> (*const f32, *const f32, *mut f32) {
        (self.u, self.v, self.m)
    }
}

/// One operand of the 36 position GEMMs: position p's matrix starts `p * step` elements in, and
/// its element (r, c) sits `r * rs + c * cs` further.
#[derive(Clone, Copy)]
struct Strided {
    step: usize,
    rs: usize,
    cs: usize,
}

impl Strided {
    /// Asserts that every element of every position's `rows × cols` matrix is inside `len`.
    fn check(self, rows: usize, cols: usize, len: usize) {
        if rows > 0 && cols > 0 {
            let last = (POSITIONS - 1) * self.step + (rows - 1) * self.rs + (cols - 1) * self.cs;
            assert!(
                last < len,
                "winograd position GEMM operand out of bounds: {last} >= {len}"
            );
        }
    }
}

/// `D_p (+)= A_p · B_p` (`m × k` times `k × n`) for every transform position p, positions in
/// parallel, one thread each.
fn position_gemms(
    (m, n, k): (usize, usize, usize),
    (a, sa): (&[f32], Strided),
    (b, sb): (&[f32], Strided),
    (d, sd): (&mut [f32], Strided),
    accumulate: bool,
) {
    sa.check(m, k, a.len());
    sb.check(k, n, b.len());
    sd.check(m, n, d.len());
    let ptrs = GemmPtrs {
        u: a.as_ptr(),
        v: b.as_ptr(),
        m: d.as_mut_ptr(),
    };
    (0..POSITIONS).into_par_iter().for_each(|p| {
        let (pa, pb, pd) = ptrs.get();
        // SAFETY: every element of every position's operands is inside its slice (checked
        // above), and the D_p of different p share no element (they are different columns of
        // each row block, as the callers' layouts make them).
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                pd.add(p * sd.step),
                sd.cs as isize,
                sd.rs as isize,
                accumulate,
                pa.add(p * sa.step),
                sa.cs as isize,
                sa.rs as isize,
                pb.add(p * sb.step),
                sb.cs as isize,
                sb.rs as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
}

/// `M_p = U_p · V_p` for every position p: U_p is `cout × cin` at row stride 36·cin from
/// `u + p·cin`, V_p is `cin × tt` at row stride 36·tt from `v + p·tt`, M_p `cout × tt` like V.
fn gemms(u: &[f32], v: &[f32], m: &mut [f32], cout: usize, cin: usize, tt: usize) {
    let rows = |w: usize| Strided {
        step: w,
        rs: POSITIONS * w,
        cs: 1,
    };
    position_gemms((cout, tt, cin), (u, rows(cin)), (v, rows(tt)), (m, rows(tt)), false);
}

/// Transformed-input and product bytes per group: groups of images are sized to this.
const GROUP_BYTES: usize = 24 << 20;

/// Images per group for these shapes (a function of the shapes alone).
pub fn group_images(n: usize, cin: usize, cout: usize, h: usize, w: usize) -> usize {
    let per = (cin + cout) * POSITIONS * Tiles::new(h, w).per_image() * 4;
    (GROUP_BYTES / per.max(1)).clamp(1, n.max(1))
}

thread_local! {
    /// The caller's transformed input and products, reused from call to call.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `y[n, cout, h, w]` = the 3×3 stride-1 pad-1 convolution of `x[n, cin, h, w]` with the
/// kernel whose transformed weights are `u` (from [`winograd_weights`]; for dX from dY pass
/// dY as `x`, its channels as `cin`, and the transposed transform).
pub fn conv3x3_winograd(x: &[f32], n: usize, cin: usize, h: usize, w: usize, u: &[f32], cout: usize, y: &mut [f32]) {
    assert_eq!(x.len(), n * cin * h * w, "winograd: input length");
    assert_eq!(y.len(), n * cout * h * w, "winograd: output length");
    assert_eq!(u.len(), cout * POSITIONS * cin, "winograd: transformed weight length");
    if n == 0 || h == 0 || w == 0 {
        return;
    }
    let g = Tiles::new(h, w);
    let gi = group_images(n, cin, cout, h, w);
    let hw = h * w;
    let mut fresh = (Vec::new(), Vec::new());
    SCRATCH.with(|cell| {
        // A fresh pair when this thread's is in use (a rayon worker that stole a second
        // convolution while waiting inside the first).
        let mut guard = cell.try_borrow_mut();
        let (v, m) = match &mut guard {
            Ok(s) => &mut **s,
            Err(_) => &mut fresh,
        };
        let mut lo = 0;
        while lo < n {
            let imgs = gi.min(n - lo);
            let tt = imgs * g.per_image();
            if v.len() < cin * POSITIONS * tt {
                v.resize(cin * POSITIONS * tt, 0.0);
            }
            if m.len() < cout * POSITIONS * tt {
                m.resize(cout * POSITIONS * tt, 0.0);
            }
            let xg = &x[lo * cin * hw..(lo + imgs) * cin * hw];
            v[..cin * POSITIONS * tt]
                .par_chunks_mut(POSITIONS * tt)
                .enumerate()
                .for_each(|(ci, vc)| input_channel(xg, cin, ci, imgs, g, vc, tt));
            gemms(u, v, m, cout, cin, tt);
            let yg = &mut y[lo * cout * hw..(lo + imgs) * cout * hw];
            // Planes in parallel, a few per task.
            let per_task = (imgs * cout).div_ceil(64).max(1);
            let mr: &[f32] = m;
            yg.par_chunks_mut(per_task * hw)
                .enumerate()
                .for_each(|(k, yc)| output_planes(mr, cout, k * per_task, g, tt, yc));
            lo += imgs;
        }
    });
}

/// `A·dy·Aᵀ` (4×4 → 6×6) of every output-gradient tile of one plane: `wd` is this channel's
/// `[36][T]` block, `t0` the image's first tile. Outside the plane dy is zero.
#[inline(always)]
fn grad_plane_body(dy: &[f32], g: Tiles, wd: &mut [f32], tt: usize, t0: usize, scratch: &mut [f32]) {
    let (h, w, tw) = (g.h, g.w, g.tw);
    // e[r][j][tx]: row r of the tile transformed along x.
    let (e, q) = scratch.split_at_mut(24 * tw);
    let q = &mut q[..4 * tw];
    for ty in 0..g.th {
        for r in 0..4 {
            let oy = TILE * ty + r;
            let er = &mut e[r * 6 * tw..(r + 1) * 6 * tw];
            if oy >= h {
                er.fill(0.0);
                continue;
            }
            let row = &dy[oy * w..(oy + 1) * w];
            for tx in 0..tw {
                for k in 0..4 {
                    let ox = TILE * tx + k;
                    q[k * tw + tx] = if ox < w { row[ox] } else { 0.0 };
                }
            }
            let (q0, q1, q2, q3) = (&q[0..tw], &q[tw..2 * tw], &q[2 * tw..3 * tw], &q[3 * tw..4 * tw]);
            for tx in 0..tw {
                let (d0, d1, d2, d3) = (q0[tx], q1[tx], q2[tx], q3[tx]);
                er[tx] = d0;
                er[tw + tx] = d0 + d1 + d2 + d3;
                er[2 * tw + tx] = d0 - d1 + d2 - d3;
                er[3 * tw + tx] = d0 + 2.0 * d1 + 4.0 * d2 + 8.0 * d3;
                er[4 * tw + tx] = d0 - 2.0 * d1 + 4.0 * d2 - 8.0 * d3;
                er[5 * tw + tx] = d3;
            }
        }
        let base = t0 + ty * tw;
        for j in 0..6 {
            let col = |r: usize| &e[(r * 6 + j) * tw..(r * 6 + j + 1) * tw];
            let (c0, c1, c2, c3) = (col(0), col(1), col(2), col(3));
            let row = |i: usize| (i * 6 + j) * tt + base;
            for tx in 0..tw {
                let (d0, d1, d2, d3) = (c0[tx], c1[tx], c2[tx], c3[tx]);
                wd[row(0) + tx] = d0;
                wd[row(1) + tx] = d0 + d1 + d2 + d3;
                wd[row(2) + tx] = d0 - d1 + d2 - d3;
                wd[row(3) + tx] = d0 + 2.0 * d1 + 4.0 * d2 + 8.0 * d3;
                wd[row(4) + tx] = d0 - 2.0 * d1 + 4.0 * d2 - 8.0 * d3;
                wd[row(5) + tx] = d3;
            }
        }
    }
}

#[inline(always)]
fn grad_channel_body(dy: &[f32], cout: usize, co: usize, imgs: usize, g: Tiles, wd: &mut [f32], tt: usize) {
    let hw = g.h * g.w;
    let mut scratch = vec![0.0f32; 28 * g.tw];
    for j in 0..imgs {
        let plane = &dy[(j * cout + co) * hw..(j * cout + co + 1) * hw];
        grad_plane_body(plane, g, wd, tt, j * g.per_image(), &mut scratch);
    }
}

fn grad_channel(dy: &[f32], cout: usize, co: usize, imgs: usize, g: Tiles, wd: &mut [f32], tt: usize) {
    dispatch!(grad_avx2, grad_channel_body, (dy: &[f32], cout: usize, co: usize, imgs: usize, g: Tiles, wd: &mut [f32], tt: usize));
}

/// `dW[co][ci] += Gᵀ Z[co][·][ci] G` for one output channel (`z` = its `[36][cin]` block).
#[inline(always)]
fn weight_grad_body(z: &[f32], cin: usize, dw: &mut [f32]) {
    let mut zl = [[0.0f32; LANES]; POSITIONS];
    let mut i0 = 0;
    while i0 < cin {
        let lanes = LANES.min(cin - i0);
        for p in 0..POSITIONS {
            for l in 0..LANES {
                zl[p][l] = z[p * cin + i0 + l.min(lanes - 1)];
            }
        }
        // t[a][q] = Σ_p G[p][a] z[p·6 + q], then out[a][b] = Σ_q t[a][q] G[q][b].
        let mut t = [[[0.0f32; LANES]; 6]; 3];
        for a in 0..3 {
            for qq in 0..6 {
                for l in 0..LANES {
                    let mut acc = 0.0;
                    for p in 0..6 {
                        acc += G[p][a] * zl[p * 6 + qq][l];
                    }
                    t[a][qq][l] = acc;
                }
            }
        }
        for l in 0..lanes {
            let k = &mut dw[(i0 + l) * 9..(i0 + l) * 9 + 9];
            for a in 0..3 {
                for b in 0..3 {
                    let mut acc = 0.0;
                    for qq in 0..6 {
                        acc += t[a][qq][l] * G[qq][b];
                    }
                    k[a * 3 + b] += acc;
                }
            }
        }
        i0 += LANES;
    }
}

fn weight_grad_one(z: &[f32], cin: usize, dw: &mut [f32]) {
    dispatch!(wgrad_avx2, weight_grad_body, (z: &[f32], cin: usize, dw: &mut [f32]));
}

/// `Z_p[cout × cin] (+)= Wd_p[cout × T] · V_pᵀ[T × cin]` for every position p: Wd_p at row
/// stride 36·T from `wd + p·T`, V_pᵀ with element (t, ci) at `v + p·T + ci·36·T + t`, Z_p at row
/// stride 36·cin from `z + p·cin`.
fn gemms_wgrad(wd: &[f32], v: &[f32], z: &mut [f32], cout: usize, cin: usize, tt: usize, accumulate: bool) {
    let rows = |w: usize| Strided {
        step: w,
        rs: POSITIONS * w,
        cs: 1,
    };
    let vt = Strided {
        step: tt,
        rs: 1,
        cs: POSITIONS * tt,
    };
    position_gemms((cout, cin, tt), (wd, rows(tt)), (v, vt), (z, rows(cin)), accumulate);
}

thread_local! {
    /// The caller's transformed output gradients and position-wise products.
    static WGRAD: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `dw[cout, cin, 3, 3] +=` the weight gradient of the 3×3 stride-1 pad-1 convolution of
/// `x[n, cin, h, w]` given `dy[n, cout, h, w]`, by the transpose of the F(4×4, 3×3)
/// algorithm: `dW = Gᵀ [Σ_tiles (A·dY·Aᵀ) ⊙ (Bᵀ·d·B)] G`, the sum over tiles being 36 GEMMs
/// with the tiles of every image as their inner dimension. Groups of images are summed in
/// order, so the result depends on the shapes alone.
pub fn conv3x3_winograd_weight_grad(
    x: &[f32],
    dy: &[f32],
    n: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    dw: &mut [f32],
) {
    assert_eq!(x.len(), n * cin * h * w, "winograd: input length");
    assert_eq!(dy.len(), n * cout * h * w, "winograd: output gradient length");
    assert_eq!(dw.len(), cout * cin * 9, "winograd: weight gradient length");
    if n == 0 || h == 0 || w == 0 {
        return;
    }
    let g = Tiles::new(h, w);
    let gi = group_images(n, cin, cout, h, w);
    let hw = h * w;
    let mut fresh = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    SCRATCH.with(|c1| {
        WGRAD.with(|c2| {
            let mut g1 = c1.try_borrow_mut();
            let mut g2 = c2.try_borrow_mut();
            let (v, _) = match &mut g1 {
                Ok(s) => &mut **s,
                Err(_) => &mut fresh.0,
            };
            let (wd, z) = match &mut g2 {
                Ok(s) => &mut **s,
                Err(_) => &mut fresh.1,
            };
            if z.len() < cout * POSITIONS * cin {
                z.resize(cout * POSITIONS * cin, 0.0);
            }
            let mut lo = 0;
            while lo < n {
                let imgs = gi.min(n - lo);
                let tt = imgs * g.per_image();
                if v.len() < cin * POSITIONS * tt {
                    v.resize(cin * POSITIONS * tt, 0.0);
                }
                if wd.len() < cout * POSITIONS * tt {
                    wd.resize(cout * POSITIONS * tt, 0.0);
                }
                let xg = &x[lo * cin * hw..(lo + imgs) * cin * hw];
                v[..cin * POSITIONS * tt]
                    .par_chunks_mut(POSITIONS * tt)
                    .enumerate()
                    .for_each(|(ci, vc)| input_channel(xg, cin, ci, imgs, g, vc, tt));
                let dyg = &dy[lo * cout * hw..(lo + imgs) * cout * hw];
                wd[..cout * POSITIONS * tt]
                    .par_chunks_mut(POSITIONS * tt)
                    .enumerate()
                    .for_each(|(co, wc)| grad_channel(dyg, cout, co, imgs, g, wc, tt));
                gemms_wgrad(wd, v, z, cout, cin, tt, lo > 0);
                lo += imgs;
            }
            let zr: &[f32] = z;
            dw.par_chunks_mut(cin * 9)
                .enumerate()
                .for_each(|(co, d)| weight_grad_one(&zr[co * POSITIONS * cin..(co + 1) * POSITIONS * cin], cin, d));
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::ConvGeom;
    use crate::cpu::reference::{conv2d_ref, winograd_ref};
    use crate::rng::Rng;

    fn geom(c: usize, h: usize, w: usize) -> ConvGeom {
        ConvGeom {
            c,
            h,
            w,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
        }
    }

    /// max |a − b| / max |b|.
    fn rel(a: &[f32], b: &[f32]) -> f64 {
        let d = a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max);
        let s = b.iter().map(|y| y.abs() as f64).fold(0.0, f64::max);
        d / s.max(1e-30)
    }

    /// (n, cin, cout, h, w): tiles that fit exactly, ragged edges, tiny planes, odd lanes.
    const SHAPES: [(usize, usize, usize, usize, usize); 7] = [
        (2, 3, 5, 8, 8),
        (3, 4, 2, 7, 9),
        (1, 9, 11, 5, 3),
        (2, 16, 8, 4, 4),
        (1, 2, 3, 1, 1),
        (2, 5, 7, 13, 6),
        (1, 17, 9, 2, 11),
    ];

    #[test]
    fn matches_direct_convolution() {
        let mut rng = Rng::new(21);
        for &(n, cin, cout, h, w) in &SHAPES {
            let x: Vec<f32> = (0..n * cin * h * w).map(|_| rng.normal()).collect();
            let wt: Vec<f32> = (0..cout * cin * 9).map(|_| rng.normal()).collect();
            let want = conv2d_ref(&x, &wt, n, &geom(cin, h, w), cout);
            let mut u = Vec::new();
            winograd_weights(&wt, cout, cin, false, &mut u);
            let mut y = vec![0.0; n * cout * h * w];
            conv3x3_winograd(&x, n, cin, h, w, &u, cout, &mut y);
            let e = rel(&y, &want);
            assert!(e < 1e-4, "{n}x{cin}->{cout} {h}x{w}: relative error {e}");
            // The plain reference agrees with both.
            let r = winograd_ref(&x, &wt, n, cin, h, w, cout);
            assert!(rel(&r, &want) < 1e-4, "reference: {}", rel(&r, &want));
        }
    }

    #[test]
    fn transposed_weights_give_the_input_gradient() {
        // dX = conv(dY, flip(Wᵀ)): compare with the adjoint identity <conv(x), dy> = <x, dX>
        // on a direct reference, coordinate by coordinate.
        let mut rng = Rng::new(22);
        for &(n, cin, cout, h, w) in &SHAPES {
            let dy: Vec<f32> = (0..n * cout * h * w).map(|_| rng.normal()).collect();
            let wt: Vec<f32> = (0..cout * cin * 9).map(|_| rng.normal()).collect();
            // Direct dX[b, ci, y, x] = Σ_co Σ_ky,kx dY[b, co, y − ky + 1, x − kx + 1] · W[co, ci, ky, kx].
            let mut want = vec![0.0f32; n * cin * h * w];
            for b in 0..n {
                for ci in 0..cin {
                    for yy in 0..h {
                        for xx in 0..w {
                            let mut s = 0.0f64;
                            for co in 0..cout {
                                for ky in 0..3 {
                                    for kx in 0..3 {
                                        let (oy, ox) = (yy as isize - ky as isize + 1, xx as isize - kx as isize + 1);
                                        if oy < 0 || ox < 0 || oy >= h as isize || ox >= w as isize {
                                            continue;
                                        }
                                        s += dy[((b * cout + co) * h + oy as usize) * w + ox as usize] as f64
                                            * wt[((co * cin + ci) * 3 + ky) * 3 + kx] as f64;
                                    }
                                }
                            }
                            want[((b * cin + ci) * h + yy) * w + xx] = s as f32;
                        }
                    }
                }
            }
            let mut u = Vec::new();
            winograd_weights(&wt, cout, cin, true, &mut u);
            let mut dx = vec![0.0; n * cin * h * w];
            conv3x3_winograd(&dy, n, cout, h, w, &u, cin, &mut dx);
            let e = rel(&dx, &want);
            assert!(e < 1e-4, "{n}x{cin}<-{cout} {h}x{w}: relative error {e}");
        }
    }

    #[test]
    fn weight_gradient_matches_direct() {
        let mut rng = Rng::new(24);
        for &(n, cin, cout, h, w) in &SHAPES {
            let x: Vec<f32> = (0..n * cin * h * w).map(|_| rng.normal()).collect();
            let dy: Vec<f32> = (0..n * cout * h * w).map(|_| rng.normal()).collect();
            // Direct: dW[co, ci, ky, kx] = Σ_b,y,x dY[b, co, y, x] · X[b, ci, y + ky − 1, x + kx − 1].
            let mut want = vec![0.0f32; cout * cin * 9];
            for co in 0..cout {
                for ci in 0..cin {
                    for k in 0..9 {
                        let (ky, kx) = (k / 3, k % 3);
                        let mut s = 0.0f64;
                        for b in 0..n {
                            for yy in 0..h {
                                for xx in 0..w {
                                    let (iy, ix) = (yy as isize + ky as isize - 1, xx as isize + kx as isize - 1);
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    s += dy[((b * cout + co) * h + yy) * w + xx] as f64
                                        * x[((b * cin + ci) * h + iy as usize) * w + ix as usize] as f64;
                                }
                            }
                        }
                        want[(co * cin + ci) * 9 + k] = s as f32;
                    }
                }
            }
            // Accumulates onto what is there.
            let mut dw = vec![1.0f32; cout * cin * 9];
            conv3x3_winograd_weight_grad(&x, &dy, n, cin, cout, h, w, &mut dw);
            for v in dw.iter_mut() {
                *v -= 1.0;
            }
            let e = rel(&dw, &want);
            assert!(e < 1e-4, "{n}x{cin}->{cout} {h}x{w}: relative error {e}");
        }
    }

    #[test]
    fn several_groups_match_one() {
        // Enough images that the call runs several groups; each image's output is independent.
        let (cin, cout, h, w) = (64, 64, 56, 56);
        let n = group_images(64, cin, cout, h, w) + 1;
        assert!(n > 1 && n < 64);
        let mut rng = Rng::new(23);
        let x: Vec<f32> = (0..n * cin * h * w).map(|_| rng.normal()).collect();
        let wt: Vec<f32> = (0..cout * cin * 9).map(|_| rng.normal() * 0.05).collect();
        let mut u = Vec::new();
        winograd_weights(&wt, cout, cin, false, &mut u);
        let mut y = vec![0.0; n * cout * h * w];
        conv3x3_winograd(&x, n, cin, h, w, &u, cout, &mut y);
        let last = (n - 1) * cin * h * w;
        let mut y1 = vec![0.0; cout * h * w];
        conv3x3_winograd(&x[last..], 1, cin, h, w, &u, cout, &mut y1);
        assert!(rel(&y[(n - 1) * cout * h * w..], &y1) < 1e-6);
        // Spot-check one plane against the direct reference.
        let want = conv2d_ref(&x[last..], &wt, 1, &geom(cin, h, w), cout);
        assert!(rel(&y1, &want) < 1e-4);
    }
}
