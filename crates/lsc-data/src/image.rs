//! JPEG decoding to RGB and PLSC's preprocessing (HWC u8 -> CHW f32, `(x - 127.5) / 128`, flip).

use crate::error::{ImageError, panic_message};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// Decodes a JPEG (baseline or progressive; grey, YCbCr, RGB or CMYK) to 8-bit RGB.
///
/// Returns the pixels in HWC order (`h * w * 3` bytes, R G B per pixel) and `(h, w)`.
/// Greyscale images are replicated to three channels, as PIL's `convert("RGB")` does in PLSC.
/// The decoder runs in strict mode, so truncated or corrupt data is an error rather than a
/// partly grey image; a decoder panic on hostile input is caught and returned as
/// [`ImageError::Panic`].
pub fn decode_rgb(bytes: &[u8]) -> Result<(Vec<u8>, usize, usize), ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let result = std::panic::catch_unwind(|| {
        let options = DecoderOptions::default()
            .jpeg_set_out_colorspace(ColorSpace::RGB)
            .set_strict_mode(true);
        let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
        decoder.decode_headers()?;
        let (w, h) = decoder
            .dimensions()
            .ok_or(zune_jpeg::errors::DecodeErrors::FormatStatic("no image dimensions"))?;
        let mut out = vec![0u8; h * w * 3];
        decoder.decode_into(&mut out)?;
        Ok::<_, ImageError>((out, h, w))
    });
    let (out, h, w) = match result {
        Ok(r) => r?,
        Err(payload) => return Err(ImageError::Panic(panic_message(payload.as_ref()))),
    };
    if out.len() != h * w * 3 || h == 0 || w == 0 {
        return Err(ImageError::Size { got: out.len(), h, w });
    }
    Ok((out, h, w))
}

/// Converts an RGB HWC u8 image to CHW f32 with PLSC's normalisation `(x - 127.5) / 128`
/// (channel order R, G, B), mirroring it left-right when `flip` is set.
///
/// # Panics
/// If `rgb_hwc.len() != h * w * 3` or `out.len() != 3 * h * w`.
pub fn to_chw_normalized(rgb_hwc: &[u8], h: usize, w: usize, flip: bool, out: &mut [f32]) {
    let hw = h * w;
    assert_eq!(rgb_hwc.len(), hw * 3, "to_chw_normalized: input is not {h}x{w}x3");
    assert_eq!(out.len(), hw * 3, "to_chw_normalized: output is not 3x{h}x{w}");
    // (x - 127.5) / 128 is exact in f32 for every u8 x (128 is a power of two).
    let lut: [f32; 256] = std::array::from_fn(|x| (x as f32 - 127.5) / 128.0);
    let (r_out, rest) = out.split_at_mut(hw);
    let (g_out, b_out) = rest.split_at_mut(hw);
    for y in 0..h {
        let row = &rgb_hwc[y * w * 3..(y + 1) * w * 3];
        let (r_row, g_row, b_row) = (
            &mut r_out[y * w..(y + 1) * w],
            &mut g_out[y * w..(y + 1) * w],
            &mut b_out[y * w..(y + 1) * w],
        );
        for (x, px) in row.chunks_exact(3).enumerate() {
            let xo = if flip { w - 1 - x } else { x };
            r_row[xo] = lut[px[0] as usize];
            g_row[xo] = lut[px[1] as usize];
            b_row[xo] = lut[px[2] as usize];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jpeg_encoder::{ColorType, Encoder, SamplingFactor};

    fn encode(pixels: &[u8], h: usize, w: usize, color: ColorType) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut enc = Encoder::new(&mut buf, 95);
        enc.set_sampling_factor(SamplingFactor::F_1_1);
        enc.encode(pixels, w as u16, h as u16, color).unwrap();
        buf
    }

    /// A smooth test pattern (JPEG reproduces smooth images closely).
    fn pattern(h: usize, w: usize, c: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(h * w * c);
        for y in 0..h {
            for x in 0..w {
                for k in 0..c {
                    v.push((20 + 3 * x + 2 * y + 40 * k) as u8);
                }
            }
        }
        v
    }

    fn max_abs_diff(a: &[u8], b: &[u8]) -> u8 {
        a.iter().zip(b).map(|(&x, &y)| x.abs_diff(y)).max().unwrap()
    }

    #[test]
    fn grey_round_trip_replicates_channels() {
        let (h, w) = (28, 20);
        let grey = pattern(h, w, 1);
        let (rgb, dh, dw) = decode_rgb(&encode(&grey, h, w, ColorType::Luma)).unwrap();
        assert_eq!((dh, dw), (h, w));
        assert_eq!(rgb.len(), h * w * 3);
        for (px, &g) in rgb.chunks_exact(3).zip(&grey) {
            assert_eq!(px[0], px[1]);
            assert_eq!(px[1], px[2]);
            assert!(px[0].abs_diff(g) <= 3, "{} vs {g}", px[0]);
        }
    }

    #[test]
    fn rgb_round_trip() {
        let (h, w) = (16, 24);
        let rgb = pattern(h, w, 3);
        let (out, dh, dw) = decode_rgb(&encode(&rgb, h, w, ColorType::Rgb)).unwrap();
        assert_eq!((dh, dw), (h, w));
        assert!(max_abs_diff(&out, &rgb) <= 6, "diff {}", max_abs_diff(&out, &rgb));
    }

    #[test]
    fn garbage_and_truncated_are_errors() {
        assert!(matches!(decode_rgb(&[]), Err(ImageError::Empty)));
        assert!(decode_rgb(b"definitely not a jpeg").is_err());
        assert!(decode_rgb(&[0xFF, 0xD8, 0xFF]).is_err());
        let noisy: Vec<u8> = (0..28 * 28).map(|i| ((i * 7919) % 251) as u8).collect();
        let jpeg = encode(&noisy, 28, 28, ColorType::Luma);
        // Cut inside the headers or the entropy-coded data. (Losing only the last few bytes,
        // the final EOI marker and padding bits, is accepted, as libjpeg does.)
        for cut in [2, 20, jpeg.len() / 2, jpeg.len() * 3 / 4, jpeg.len() - 16] {
            assert!(decode_rgb(&jpeg[..cut]).is_err(), "truncated at {cut} decoded");
        }
        let mut corrupt = jpeg.clone();
        for b in corrupt.iter_mut().skip(200) {
            *b = 0xFF;
        }
        assert!(decode_rgb(&corrupt).is_err());
    }

    #[test]
    fn chw_normalisation_and_flip_match_reference() {
        let (h, w) = (3, 5);
        let img: Vec<u8> = (0..h * w * 3).map(|i| (i * 17 % 256) as u8).collect();
        for flip in [false, true] {
            let mut out = vec![f32::NAN; 3 * h * w];
            to_chw_normalized(&img, h, w, flip, &mut out);
            for c in 0..3 {
                for y in 0..h {
                    for x in 0..w {
                        let sx = if flip { w - 1 - x } else { x };
                        let want = (img[(y * w + sx) * 3 + c] as f32 - 127.5) / 128.0;
                        assert_eq!(out[c * h * w + y * w + x], want);
                    }
                }
            }
        }
        let mut out = [0.0f32; 3];
        to_chw_normalized(&[0, 255, 128], 1, 1, false, &mut out);
        assert_eq!(out, [-127.5 / 128.0, 127.5 / 128.0, 0.5 / 128.0]);
    }
}
