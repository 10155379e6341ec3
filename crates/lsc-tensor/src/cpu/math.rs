//! Vectorisable elementwise math for the hot loops (softmax exponentials).

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5·2²³: adding and subtracting it rounds an f32 of magnitude < 2²² to an integer.
const ROUND: f32 = 12_582_912.0;

/// e^x with a relative error below 2e-7 for x in [−87, 88] (Cephes' expf polynomial after
/// range reduction); x is clamped to that range first, so very negative inputs give about
/// 1e-38 instead of 0, and NaN stays NaN. Branch-free, so loops over slices vectorise.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r
        + 0.5;
    let p = p * r2 + r + 1.0;
    // 2^n through the exponent bits; n is in [−126, 127] after the clamp. NaN maps to n = 0.
    let bits = (((n as i32) + 127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// Runs `$body` compiled for AVX-512 or AVX2 + FMA when the CPU has them, else for the
/// baseline target. Every path does the same IEEE operations in the same order (the bodies
/// fix their lane counts and never fuse a multiply-add), so they give the same bits.
macro_rules! dispatch {
    ($avx:ident, $generic:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
            unsafe fn wide($($arg: $ty),*) -> $ret {
                $generic($($arg),*)
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn $avx($($arg: $ty),*) -> $ret {
                $generic($($arg),*)
            }
            if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl") {
                // SAFETY: the CPU supports the features this copy was compiled for.
                return unsafe { wide($($arg),*) };
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: as above.
                return unsafe { $avx($($arg),*) };
            }
        }
        return $generic($($arg),*);
    };
}

#[inline(always)]
fn max_into_body(acc: &mut [f32], xs: &[f32]) {
    for (a, &x) in acc.iter_mut().zip(xs) {
        *a = a.max(x);
    }
}

/// `acc[i] = max(acc[i], xs[i])` (a NaN in `xs` is ignored, as `f32::max` does).
pub fn max_into(acc: &mut [f32], xs: &[f32]) {
    dispatch!(max_into_avx2, max_into_body, (acc: &mut [f32], xs: &[f32]) -> ());
}

#[inline(always)]
fn exp_sub_acc_body(xs: &[f32], shift: &[f32], acc: &mut [f32]) {
    for ((a, &x), &s) in acc.iter_mut().zip(xs).zip(shift) {
        *a += exp(x - s);
    }
}

/// `acc[i] += e^(xs[i] − shift[i])`: one class row of column-wise softmax sums.
pub fn exp_sub_acc(xs: &[f32], shift: &[f32], acc: &mut [f32]) {
    dispatch!(exp_sub_acc_avx2, exp_sub_acc_body, (xs: &[f32], shift: &[f32], acc: &mut [f32]) -> ());
}

#[inline(always)]
fn exp_sub_scale_body(xs: &mut [f32], shift: &[f32], k: &[f32], c: f32) {
    for ((x, &s), &k) in xs.iter_mut().zip(shift).zip(k) {
        *x = exp(*x - s) * k * c;
    }
}

/// `xs[i] = (e^(xs[i] − shift[i]) · k[i]) · c`: one class row of column-wise probabilities,
/// times a per-row factor.
pub fn exp_sub_scale(xs: &mut [f32], shift: &[f32], k: &[f32], c: f32) {
    dispatch!(exp_sub_scale_avx2, exp_sub_scale_body, (xs: &mut [f32], shift: &[f32], k: &[f32], c: f32) -> ());
}

#[inline(always)]
fn dot_wide_body(a: &[f32], b: &[f32]) -> f32 {
    dot(a, b)
}

/// [`dot`] compiled for the widest vectors the CPU has (the same bits): for long rows in hot
/// loops, where a runtime dispatch per call is negligible.
pub fn dot_wide(a: &[f32], b: &[f32]) -> f32 {
    dispatch!(dot_wide_avx2, dot_wide_body, (a: &[f32], b: &[f32]) -> f32);
}

#[inline(always)]
fn lin2_body(out: &mut [f32], x: &[f32], a: f32, y: &[f32], b: f32) {
    for ((o, &x), &y) in out.iter_mut().zip(x).zip(y) {
        *o = a * x + b * y;
    }
}

/// `out[i] = a·x[i] + b·y[i]`.
pub fn lin2(out: &mut [f32], x: &[f32], a: f32, y: &[f32], b: f32) {
    dispatch!(lin2_avx2, lin2_body, (out: &mut [f32], x: &[f32], a: f32, y: &[f32], b: f32) -> ());
}

#[inline(always)]
fn sgd_momentum_body(w: &mut [f32], v: &mut [f32], g: &[f32], lr: f32, mu: f32, wd: f32) {
    for ((w, v), &g) in w.iter_mut().zip(v.iter_mut()).zip(g) {
        *v = mu * *v + g + wd * *w;
        *w -= lr * *v;
    }
}

/// SGD with momentum on one row, PyTorch's rule: `v = μ·v + g + wd·w`, then `w −= lr·v`.
pub fn sgd_momentum(w: &mut [f32], v: &mut [f32], g: &[f32], lr: f32, mu: f32, wd: f32) {
    dispatch!(sgd_momentum_avx2, sgd_momentum_body, (w: &mut [f32], v: &mut [f32], g: &[f32], lr: f32, mu: f32, wd: f32) -> ());
}

#[inline(always)]
fn sgd_momentum_minus_body(w: &mut [f32], v: &mut [f32], du: &[f32], b: f32, lr: f32, mu: f32, wd: f32) {
    for ((w, v), &du) in w.iter_mut().zip(v.iter_mut()).zip(du) {
        let g = du - b * *w;
        *v = mu * *v + g + wd * *w;
        *w -= lr * *v;
    }
}

/// [`sgd_momentum`] with the gradient `g = du − b·w` formed on the fly (the same bits as
/// forming it first): the weight gradient of a normalised row.
pub fn sgd_momentum_minus(w: &mut [f32], v: &mut [f32], du: &[f32], b: f32, lr: f32, mu: f32, wd: f32) {
    dispatch!(sgd_momentum_minus_avx2, sgd_momentum_minus_body, (w: &mut [f32], v: &mut [f32], du: &[f32], b: f32, lr: f32, mu: f32, wd: f32) -> ());
}

/// Σ aᵢ·bᵢ in 8 independent f32 lanes (vectorises; a plain iterator sum cannot, since
/// reordering float additions changes the result).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    let mut s = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_std_exp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 2e-7, "worst relative error {worst}");
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(-1e30) < 1e-37 && exp(-1e30) >= 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn dispatched_and_baseline_paths_agree_bit_for_bit() {
        let base: Vec<f32> = (0..1003).map(|i| (i as f32 - 500.0) * 0.173).collect();
        let shift: Vec<f32> = (0..1003).map(|i| (i % 9) as f32 * 0.5).collect();
        let (mut a, mut b) = (vec![0.25f32; 1003], vec![0.25f32; 1003]);
        exp_sub_acc(&base, &shift, &mut a);
        exp_sub_acc_body(&base, &shift, &mut b);
        assert_eq!(a, b);
        assert_eq!(dot_wide(&base, &shift).to_bits(), dot(&base, &shift).to_bits());
    }

    #[test]
    fn dot_matches_f64_reference() {
        for n in [0usize, 1, 7, 8, 9, 512, 1001] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.02).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - want).abs() < 1e-5 * (1.0 + want.abs()), "n={n}");
        }
    }

    #[test]
    fn column_kernels_match_plain_references() {
        let n = 37;
        let xs: Vec<f32> = (0..n).map(|i| (i as f32 - 20.0) * 0.7).collect();
        let shift: Vec<f32> = (0..n).map(|i| (i % 5) as f32 * 1.3).collect();
        let k: Vec<f32> = (0..n).map(|i| 0.5 + i as f32 * 0.01).collect();
        let mut acc: Vec<f32> = (0..n).map(|i| i as f32 * 0.1).collect();
        let want: Vec<f64> = (0..n)
            .map(|i| acc[i] as f64 + ((xs[i] - shift[i]) as f64).exp())
            .collect();
        exp_sub_acc(&xs, &shift, &mut acc);
        for (a, w) in acc.iter().zip(&want) {
            assert!((*a as f64 - w).abs() <= 4e-7 * w.abs(), "{a} vs {w}");
        }
        let mut p = xs.clone();
        exp_sub_scale(&mut p, &shift, &k, 1.5);
        for i in 0..n {
            let w = ((xs[i] - shift[i]) as f64).exp() * k[i] as f64 * 1.5;
            assert!((p[i] as f64 - w).abs() <= 4e-7 * w, "{} vs {w}", p[i]);
        }
        let mut m = vec![0.0f32; n];
        let mut with_nan = xs.clone();
        with_nan[3] = f32::NAN;
        max_into(&mut m, &with_nan);
        for i in 0..n {
            let want = if i == 3 { 0.0 } else { xs[i].max(0.0) };
            assert_eq!(m[i], want);
        }
        assert_eq!(dot_wide(&xs, &k).to_bits(), dot(&xs, &k).to_bits());
        let mut l = vec![0.0f32; n];
        lin2(&mut l, &xs, 0.5, &k, -2.0);
        assert!((0..n).all(|i| l[i] == 0.5 * xs[i] - 2.0 * k[i]));
        let (mut w, mut v) = (xs.clone(), k.clone());
        sgd_momentum(&mut w, &mut v, &shift, 0.1, 0.9, 1e-3);
        for i in 0..n {
            let vi = 0.9 * k[i] + shift[i] + 1e-3 * xs[i];
            assert_eq!((v[i], w[i]), (vi, xs[i] - 0.1 * vi));
        }
        let mut g = vec![0.0f32; n];
        lin2(&mut g, &shift, 1.0, &xs, -0.25);
        let (mut w1, mut v1, mut w2, mut v2) = (xs.clone(), k.clone(), xs.clone(), k.clone());
        sgd_momentum(&mut w1, &mut v1, &g, 0.1, 0.9, 1e-3);
        sgd_momentum_minus(&mut w2, &mut v2, &shift, 0.25, 0.1, 0.9, 1e-3);
        assert_eq!((w1, v1), (w2, v2));
        // The dispatched copies give the same bits as the baseline ones.
        let (mut a, mut b) = (xs.clone(), xs.clone());
        exp_sub_scale(&mut a, &shift, &k, 0.5);
        exp_sub_scale_body(&mut b, &shift, &k, 0.5);
        assert_eq!(a, b);
    }
}
