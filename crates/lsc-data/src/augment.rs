//! Training augmentation on decoded RGB images: a random resized crop (torchvision's
//! `RandomResizedCrop` rule), bilinear resizing, the horizontal flip and PLSC's normalisation,
//! fused into one pass that writes the CHW f32 sample.
//!
//! Every random choice comes from `Rng::stream(seed mixed with epoch and a salt, index)`, so a
//! sample's augmentation depends only on `(seed, epoch, dataset index)`.

use crate::image::to_chw_normalized;
use lsc_tensor::Rng;

/// A random resized crop: a region covering a `scale` fraction of the image area with aspect
/// ratio (width / height) in `ratio` (log-uniform), at a uniform position, resized to the loader's
/// `height x width`. Defaults are torchvision's: scale (0.08, 1), ratio (3/4, 4/3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RandomCrop {
    pub scale: (f32, f32),
    pub ratio: (f32, f32),
}

impl Default for RandomCrop {
    fn default() -> Self {
        RandomCrop {
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }
}

impl RandomCrop {
    /// Checks `0 < scale.0 <= scale.1 <= 1` and `0 < ratio.0 <= ratio.1` (all finite).
    pub fn validate(&self) -> Result<(), String> {
        let (s0, s1) = self.scale;
        let (r0, r1) = self.ratio;
        if !(s0 > 0.0 && s0 <= s1 && s1 <= 1.0) {
            return Err(format!("crop scale ({s0}, {s1}) must satisfy 0 < min <= max <= 1"));
        }
        if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
            return Err(format!("crop ratio ({r0}, {r1}) must satisfy 0 < min <= max (finite)"));
        }
        Ok(())
    }
}

/// A region of the source image: top, left, height, width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub y: usize,
    pub x: usize,
    pub h: usize,
    pub w: usize,
}

impl Region {
    /// The whole `h x w` image.
    pub fn full(h: usize, w: usize) -> Region {
        Region { y: 0, x: 0, h, w }
    }
}

fn mixed_seed(seed: u64, epoch: u64, salt: u64) -> u64 {
    seed ^ salt ^ epoch.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The crop region of dataset sample `index` in `epoch` for an `h x w` image (torchvision's
/// `RandomResizedCrop.get_params`: ten tries, then a centre crop with the ratio clamped).
pub fn crop_for(crop: &RandomCrop, seed: u64, epoch: u64, index: usize, h: usize, w: usize) -> Region {
    const CROP_SALT: u64 = 0xC809_5A17_3E2D_4B61;
    let mut rng = Rng::stream(mixed_seed(seed, epoch, CROP_SALT), index as u64);
    let area = (h * w) as f64;
    let (lr0, lr1) = ((crop.ratio.0 as f64).ln(), (crop.ratio.1 as f64).ln());
    for _ in 0..10 {
        let target = area * (crop.scale.0 as f64 + (crop.scale.1 - crop.scale.0) as f64 * rng.uniform_f64());
        let aspect = (lr0 + (lr1 - lr0) * rng.uniform_f64()).exp();
        let cw = (target * aspect).sqrt().round() as usize;
        let ch = (target / aspect).sqrt().round() as usize;
        if 0 < cw && cw <= w && 0 < ch && ch <= h {
            let y = rng.below((h - ch + 1) as u64) as usize;
            let x = rng.below((w - cw + 1) as u64) as usize;
            return Region { y, x, h: ch, w: cw };
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (ch, cw) = if in_ratio < crop.ratio.0 as f64 {
        (((w as f64) / crop.ratio.0 as f64).round() as usize, w)
    } else if in_ratio > crop.ratio.1 as f64 {
        (h, ((h as f64) * crop.ratio.1 as f64).round() as usize)
    } else {
        (h, w)
    };
    let (ch, cw) = (ch.clamp(1, h), cw.clamp(1, w));
    Region {
        y: (h - ch) / 2,
        x: (w - cw) / 2,
        h: ch,
        w: cw,
    }
}

/// Source sampling positions of bilinear resizing with half-pixel centres (OpenCV's
/// `INTER_LINEAR`, PyTorch's `align_corners=False`, no antialiasing): for each output
/// coordinate, `(first source index, second source index, weight of the second)`.
fn taps(out_len: usize, src_start: usize, src_len: usize) -> Vec<(usize, usize, f32)> {
    let scale = src_len as f64 / out_len as f64;
    (0..out_len)
        .map(|o| {
            let s = ((o as f64 + 0.5) * scale - 0.5).clamp(0.0, (src_len - 1) as f64);
            let i0 = s.floor() as usize;
            let i1 = (i0 + 1).min(src_len - 1);
            (src_start + i0, src_start + i1, (s - i0 as f64) as f32)
        })
        .collect()
}

/// Writes `region` of the `h x w` RGB HWC image `rgb`, resized to `out_h x out_w` (bilinear,
/// half-pixel centres), flipped left-right when `flip`, normalised `(x - 127.5) / 128`, as CHW
/// f32 into `out` (`3 * out_h * out_w` values). A region of exactly the output size is copied
/// without interpolation.
///
/// # Panics
/// If the buffers do not match the sizes or the region lies outside the image.
pub fn resize_normalize(
    rgb: &[u8],
    h: usize,
    w: usize,
    region: Region,
    out_h: usize,
    out_w: usize,
    flip: bool,
    out: &mut [f32],
) {
    assert_eq!(rgb.len(), h * w * 3, "resize_normalize: input is not {h}x{w}x3");
    assert_eq!(
        out.len(),
        3 * out_h * out_w,
        "resize_normalize: output is not 3x{out_h}x{out_w}"
    );
    assert!(
        region.h > 0 && region.w > 0 && region.y + region.h <= h && region.x + region.w <= w,
        "resize_normalize: region {region:?} outside {h}x{w}"
    );
    if region == Region::full(h, w) && (h, w) == (out_h, out_w) {
        to_chw_normalized(rgb, h, w, flip, out);
        return;
    }
    let ys = taps(out_h, region.y, region.h);
    let mut xs = taps(out_w, region.x, region.w);
    if flip {
        xs.reverse();
    }
    let plane = out_h * out_w;
    let (r_out, rest) = out.split_at_mut(plane);
    let (g_out, b_out) = rest.split_at_mut(plane);
    // One interpolated source row pair at a time: vertical blend first (per x tap, both columns).
    let mut row = vec![0.0f32; w * 3];
    for (oy, &(y0, y1, fy)) in ys.iter().enumerate() {
        let (a, b) = (&rgb[y0 * w * 3..(y0 + 1) * w * 3], &rgb[y1 * w * 3..(y1 + 1) * w * 3]);
        let lo = region.x * 3;
        let hi = (region.x + region.w) * 3;
        for i in lo..hi {
            let (p, q) = (a[i] as f32, b[i] as f32);
            row[i] = p + (q - p) * fy;
        }
        let base = oy * out_w;
        for (ox, &(x0, x1, fx)) in xs.iter().enumerate() {
            let (p, q) = (&row[x0 * 3..x0 * 3 + 3], &row[x1 * 3..x1 * 3 + 3]);
            let v = |c: usize| (p[c] + (q[c] - p[c]) * fx - 127.5) * (1.0 / 128.0);
            r_out[base + ox] = v(0);
            g_out[base + ox] = v(1);
            b_out[base + ox] = v(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain reference: bilinear sample of channel c at output (oy, ox), then normalise.
    fn reference(rgb: &[u8], w: usize, r: Region, oh: usize, ow: usize, flip: bool) -> Vec<f32> {
        let mut out = vec![0.0; 3 * oh * ow];
        for c in 0..3 {
            for oy in 0..oh {
                for ox in 0..ow {
                    let sx_o = if flip { ow - 1 - ox } else { ox };
                    let fy = ((oy as f64 + 0.5) * r.h as f64 / oh as f64 - 0.5).clamp(0.0, (r.h - 1) as f64);
                    let fx = ((sx_o as f64 + 0.5) * r.w as f64 / ow as f64 - 0.5).clamp(0.0, (r.w - 1) as f64);
                    let (y0, x0) = (fy.floor() as usize, fx.floor() as usize);
                    let (y1, x1) = ((y0 + 1).min(r.h - 1), (x0 + 1).min(r.w - 1));
                    let px = |y: usize, x: usize| rgb[((r.y + y) * w + r.x + x) * 3 + c] as f64;
                    let (dy, dx) = (fy - y0 as f64, fx - x0 as f64);
                    let top = px(y0, x0) * (1.0 - dx) + px(y0, x1) * dx;
                    let bot = px(y1, x0) * (1.0 - dx) + px(y1, x1) * dx;
                    let v = top * (1.0 - dy) + bot * dy;
                    out[c * oh * ow + oy * ow + ox] = ((v - 127.5) / 128.0) as f32;
                }
            }
        }
        out
    }

    fn image(h: usize, w: usize) -> Vec<u8> {
        (0..h * w * 3).map(|i| ((i * 37 + i / 7) % 256) as u8).collect()
    }

    #[test]
    fn resize_matches_the_bilinear_reference() {
        let (h, w) = (13, 17);
        let rgb = image(h, w);
        let regions = [
            Region::full(h, w),
            Region {
                y: 2,
                x: 3,
                h: 9,
                w: 11,
            },
            Region {
                y: 12,
                x: 16,
                h: 1,
                w: 1,
            },
        ];
        for r in regions {
            for (oh, ow) in [(7, 5), (13, 17), (26, 40), (1, 1)] {
                for flip in [false, true] {
                    let mut out = vec![f32::NAN; 3 * oh * ow];
                    resize_normalize(&rgb, h, w, r, oh, ow, flip, &mut out);
                    let want = reference(&rgb, w, r, oh, ow, flip);
                    let err = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                    assert!(err < 1e-4, "{r:?} -> {oh}x{ow} flip {flip}: {err}");
                }
            }
        }
        // Same size: bit-identical to the plain conversion.
        let mut a = vec![0.0; 3 * h * w];
        let mut b = vec![0.0; 3 * h * w];
        resize_normalize(&rgb, h, w, Region::full(h, w), h, w, true, &mut a);
        to_chw_normalized(&rgb, h, w, true, &mut b);
        assert_eq!(a, b);
        // Upscaling a constant image keeps it constant.
        let flat = vec![200u8; 4 * 4 * 3];
        let mut out = vec![0.0; 3 * 9 * 9];
        resize_normalize(&flat, 4, 4, Region::full(4, 4), 9, 9, false, &mut out);
        assert!(out.iter().all(|&v| v == (200.0 - 127.5) / 128.0));
    }

    #[test]
    fn crops_are_deterministic_in_bounds_and_follow_the_scale() {
        let crop = RandomCrop::default();
        let (h, w) = (120, 100);
        let mut fracs = Vec::new();
        for i in 0..2000 {
            let r = crop_for(&crop, 9, 2, i, h, w);
            assert_eq!(r, crop_for(&crop, 9, 2, i, h, w));
            assert!(r.h >= 1 && r.w >= 1 && r.y + r.h <= h && r.x + r.w <= w, "{r:?}");
            fracs.push((r.h * r.w) as f64 / (h * w) as f64);
        }
        assert_ne!(crop_for(&crop, 9, 2, 0, h, w), crop_for(&crop, 9, 3, 0, h, w));
        let mean = fracs.iter().sum::<f64>() / fracs.len() as f64;
        // Uniform area in [0.08, 1] has mean 0.54 (rounding and retries move it a little).
        assert!((0.45..0.62).contains(&mean), "{mean}");
        let full = RandomCrop {
            scale: (1.0, 1.0),
            ratio: (5.0 / 6.0, 5.0 / 6.0),
        };
        assert_eq!(crop_for(&full, 1, 0, 0, h, w), Region::full(h, w));
        // Ratio out of reach: a centre crop with the clamped ratio.
        let wide = RandomCrop {
            scale: (1.0, 1.0),
            ratio: (2.0, 3.0),
        };
        assert_eq!(
            crop_for(&wide, 1, 0, 0, h, w),
            Region {
                y: 35,
                x: 0,
                h: 50,
                w: 100
            }
        );
        assert!(
            RandomCrop {
                scale: (0.0, 1.0),
                ..crop
            }
            .validate()
            .is_err()
        );
        assert!(
            RandomCrop {
                ratio: (2.0, 1.0),
                ..crop
            }
            .validate()
            .is_err()
        );
        assert!(crop.validate().is_ok());
    }
}
