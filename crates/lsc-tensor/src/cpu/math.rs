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

/// Runs `$body` compiled for AVX2 + FMA when the CPU has them, else for the baseline target.
/// Both paths do the same IEEE operations in the same order, so they give the same bits.
macro_rules! dispatch {
    ($avx:ident, $generic:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx($($arg: $ty),*) -> $ret {
            $generic($($arg),*)
        }
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports the features this copy was compiled for.
                return unsafe { $avx($($arg),*) };
            }
        }
        return $generic($($arg),*);
    };
}

#[inline(always)]
fn exp_shifted_sum_body(xs: &mut [f32], shift: f32) -> f64 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = xs.chunks_exact_mut(8);
    for c in &mut chunks {
        for l in 0..8 {
            c[l] = exp(c[l] - shift);
            lanes[l] += c[l];
        }
    }
    let mut s: f64 = lanes.iter().map(|&v| v as f64).sum();
    for v in chunks.into_remainder() {
        *v = exp(*v - shift);
        s += *v as f64;
    }
    s
}

/// `xs[i] = e^(xs[i] − shift)` and returns their sum in f64.
pub fn exp_shifted_sum(xs: &mut [f32], shift: f32) -> f64 {
    dispatch!(exp_shifted_sum_avx2, exp_shifted_sum_body, (xs: &mut [f32], shift: f32) -> f64);
}

#[inline(always)]
fn exp_scaled_body(xs: &mut [f32], shift: f32, k: f32) {
    for v in xs.iter_mut() {
        *v = exp(*v - shift) * k;
    }
}

/// `xs[i] = k · e^(xs[i] − shift)` (softmax probabilities when `k = 1 / Σ`).
pub fn exp_scaled(xs: &mut [f32], shift: f32, k: f32) {
    dispatch!(exp_scaled_avx2, exp_scaled_body, (xs: &mut [f32], shift: f32, k: f32) -> ());
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
        let (mut a, mut b) = (base.clone(), base.clone());
        let sa = exp_shifted_sum(&mut a, 2.5);
        let sb = exp_shifted_sum_body(&mut b, 2.5);
        assert_eq!(sa.to_bits(), sb.to_bits());
        assert_eq!(a, b);
        let (mut c, mut d) = (base.clone(), base);
        exp_scaled(&mut c, 1.0, 0.25);
        exp_scaled_body(&mut d, 1.0, 0.25);
        assert_eq!(c, d);
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
    fn shifted_sum_matches_reference() {
        let mut v: Vec<f32> = (0..37).map(|i| (i as f32 - 20.0) * 0.7).collect();
        let r: Vec<f64> = v.iter().map(|&x| ((x - 3.0) as f64).exp()).collect();
        let s = exp_shifted_sum(&mut v, 3.0);
        assert!((s - r.iter().sum::<f64>()).abs() < 1e-6 * s);
        for (a, b) in v.iter().zip(&r) {
            assert!(((*a as f64) - b).abs() <= 2e-7 * b);
        }
    }
}
