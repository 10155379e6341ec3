//! Image decoding to RGB (JPEG baseline and progressive, PNG; grey, colour, with or without
//! alpha) and PLSC's preprocessing (HWC u8 -> CHW f32, `(x - 127.5) / 128`, flip).

use crate::error::{ImageError, panic_message};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;
use zune_png::PngDecoder;

/// The largest image decoded, in pixels (a header claiming more is an error, not an
/// allocation): 8192 x 8192.
pub const MAX_PIXELS: usize = 1 << 26;

/// The encoded formats [`decode_rgb`] reads, told apart by their first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
}

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// The format of encoded image bytes, from their signature.
pub fn sniff(bytes: &[u8]) -> Result<ImageFormat, ImageError> {
    if bytes.is_empty() {
        Err(ImageError::Empty)
    } else if bytes.starts_with(&[0xFF, 0xD8]) {
        Ok(ImageFormat::Jpeg)
    } else if bytes.starts_with(&PNG_SIGNATURE) {
        Ok(ImageFormat::Png)
    } else {
        let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Err(ImageError::Format(head.join(" ")))
    }
}

fn jpeg_options() -> DecoderOptions {
    DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_strict_mode(true)
        .set_max_width(1 << 14)
        .set_max_height(1 << 14)
}

fn png_options() -> DecoderOptions {
    DecoderOptions::default()
        .png_set_strip_to_8bit(true)
        .png_set_decode_animated(false)
        .set_strict_mode(true)
        .set_max_width(1 << 14)
        .set_max_height(1 << 14)
}

fn check_dims(h: usize, w: usize) -> Result<(), ImageError> {
    if h == 0 || w == 0 || h.saturating_mul(w) > MAX_PIXELS {
        return Err(ImageError::Dimensions { h, w });
    }
    Ok(())
}

/// Runs a decoder closure, turning a panic on hostile input into [`ImageError::Panic`].
fn guarded<T>(f: impl FnOnce() -> Result<T, ImageError>) -> Result<T, ImageError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => Err(ImageError::Panic(panic_message(payload.as_ref()))),
    }
}

/// The `(h, w)` of an encoded image, from its headers only (no pixel decoding).
pub fn image_size(bytes: &[u8]) -> Result<(usize, usize), ImageError> {
    let format = sniff(bytes)?;
    let (h, w) = guarded(|| match format {
        ImageFormat::Jpeg => {
            let mut d = JpegDecoder::new_with_options(ZCursor::new(bytes), jpeg_options());
            d.decode_headers()?;
            let (w, h) = d.dimensions().ok_or(ImageError::NoDimensions)?;
            Ok((h, w))
        }
        ImageFormat::Png => {
            let mut d = PngDecoder::new_with_options(ZCursor::new(bytes), png_options());
            d.decode_headers()?;
            let (w, h) = d.dimensions().ok_or(ImageError::NoDimensions)?;
            Ok((h, w))
        }
    })?;
    check_dims(h, w)?;
    Ok((h, w))
}

/// Decodes a JPEG (baseline or progressive; grey, YCbCr, RGB or CMYK) or a PNG (grey, grey +
/// alpha, palette, RGB, RGBA; 1 to 16 bits; interlaced or not) to 8-bit RGB.
///
/// Returns the pixels in HWC order (`h * w * 3` bytes, R G B per pixel) and `(h, w)`.
/// Greyscale images are replicated to three channels and alpha is dropped, as PIL's
/// `convert("RGB")` does in PLSC; 16-bit PNG samples keep their high byte. The decoders run in
/// strict mode, so truncated or corrupt data is an error rather than a partly grey image; a
/// decoder panic on hostile input is caught and returned as [`ImageError::Panic`].
pub fn decode_rgb(bytes: &[u8]) -> Result<(Vec<u8>, usize, usize), ImageError> {
    let mut out = Vec::new();
    let (h, w) = decode_rgb_into(bytes, &mut out)?;
    Ok((out, h, w))
}

/// [`decode_rgb`] into a reusable buffer (resized to `h * w * 3`); returns `(h, w)`.
pub fn decode_rgb_into(bytes: &[u8], out: &mut Vec<u8>) -> Result<(usize, usize), ImageError> {
    match sniff(bytes)? {
        ImageFormat::Jpeg => guarded(|| decode_jpeg(bytes, out)),
        ImageFormat::Png => guarded(|| decode_png(bytes, out)),
    }
}

fn decode_jpeg(bytes: &[u8], out: &mut Vec<u8>) -> Result<(usize, usize), ImageError> {
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), jpeg_options());
    decoder.decode_headers()?;
    let (w, h) = decoder.dimensions().ok_or(ImageError::NoDimensions)?;
    check_dims(h, w)?;
    out.clear();
    out.resize(h * w * 3, 0);
    decoder.decode_into(out)?;
    Ok((h, w))
}

fn decode_png(bytes: &[u8], out: &mut Vec<u8>) -> Result<(usize, usize), ImageError> {
    let mut decoder = PngDecoder::new_with_options(ZCursor::new(bytes), png_options());
    decoder.decode_headers()?;
    let (w, h) = decoder.dimensions().ok_or(ImageError::NoDimensions)?;
    check_dims(h, w)?;
    let colorspace = decoder.colorspace().ok_or(ImageError::NoDimensions)?;
    let channels = colorspace.num_components();
    let size = decoder.output_buffer_size().ok_or(ImageError::NoDimensions)?;
    if size != h * w * channels {
        return Err(ImageError::Size { got: size, h, w });
    }
    let mut raw = vec![0u8; size];
    decoder.decode_into(&mut raw)?;
    out.clear();
    out.reserve(h * w * 3);
    match colorspace {
        ColorSpace::RGB => out.extend_from_slice(&raw),
        ColorSpace::RGBA => out.extend(raw.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]])),
        ColorSpace::Luma => out.extend(raw.iter().flat_map(|&g| [g, g, g])),
        ColorSpace::LumaA => out.extend(raw.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]])),
        other => return Err(ImageError::Colorspace(format!("{other:?}"))),
    }
    Ok((h, w))
}

/// The value of pixel byte `x` after PLSC's normalisation, `(x - 127.5) / 128` (exact in f32
/// for every u8 since 128 is a power of two).
pub(crate) static NORM_LUT: [f32; 256] = {
    let mut lut = [0.0f32; 256];
    let mut x = 0;
    while x < 256 {
        lut[x] = (x as f32 - 127.5) / 128.0;
        x += 1;
    }
    lut
};

/// Converts an RGB HWC u8 image to CHW f32 with PLSC's normalisation `(x - 127.5) / 128`
/// (channel order R, G, B), mirroring it left-right when `flip` is set.
///
/// # Panics
/// If `rgb_hwc.len() != h * w * 3` or `out.len() != 3 * h * w`.
pub fn to_chw_normalized(rgb_hwc: &[u8], h: usize, w: usize, flip: bool, out: &mut [f32]) {
    let hw = h * w;
    assert_eq!(rgb_hwc.len(), hw * 3, "to_chw_normalized: input is not {h}x{w}x3");
    assert_eq!(out.len(), hw * 3, "to_chw_normalized: output is not 3x{h}x{w}");
    let lut = &NORM_LUT;
    let (r_out, rest) = out.split_at_mut(hw);
    let (g_out, b_out) = rest.split_at_mut(hw);
    for ((row, r_row), (g_row, b_row)) in rgb_hwc
        .chunks_exact(w * 3)
        .zip(r_out.chunks_exact_mut(w))
        .zip(g_out.chunks_exact_mut(w).zip(b_out.chunks_exact_mut(w)))
    {
        if flip {
            for (((px, r), g), b) in row
                .chunks_exact(3)
                .zip(r_row.iter_mut().rev())
                .zip(g_row.iter_mut().rev())
                .zip(b_row.iter_mut().rev())
            {
                *r = lut[px[0] as usize];
                *g = lut[px[1] as usize];
                *b = lut[px[2] as usize];
            }
        } else {
            for (((px, r), g), b) in row
                .chunks_exact(3)
                .zip(r_row.iter_mut())
                .zip(g_row.iter_mut())
                .zip(b_row.iter_mut())
            {
                *r = lut[px[0] as usize];
                *g = lut[px[1] as usize];
                *b = lut[px[2] as usize];
            }
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
    fn rgb_round_trip_and_header_size() {
        let (h, w) = (16, 24);
        let rgb = pattern(h, w, 3);
        let jpeg = encode(&rgb, h, w, ColorType::Rgb);
        let (out, dh, dw) = decode_rgb(&jpeg).unwrap();
        assert_eq!((dh, dw), (h, w));
        assert!(max_abs_diff(&out, &rgb) <= 6, "diff {}", max_abs_diff(&out, &rgb));
        assert_eq!(image_size(&jpeg).unwrap(), (h, w));
        let mut buf = vec![7u8; 5];
        assert_eq!(decode_rgb_into(&jpeg, &mut buf).unwrap(), (h, w));
        assert_eq!(buf, out);
    }

    #[test]
    fn garbage_and_truncated_are_errors() {
        assert!(matches!(decode_rgb(&[]), Err(ImageError::Empty)));
        let e = decode_rgb(b"definitely not a jpeg").unwrap_err();
        assert!(matches!(e, ImageError::Format(_)), "{e}");
        assert!(e.to_string().contains("64 65 66"), "{e}");
        assert!(decode_rgb(&[0xFF, 0xD8, 0xFF]).is_err());
        assert!(decode_rgb(&PNG_SIGNATURE).is_err());
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
