//! `cargo xtask bench-data`: the data path per core for 112x112 JPEG records: decode, then
//! flip and PLSC normalisation to CHW f32, on one thread (images/s per core), for baseline
//! 4:2:0 quality 90 (the target is >= 4,000 images/s per core), progressive 4:2:0 and baseline
//! 4:4:4. The images are real: Fashion-MNIST pictures from `datasets/fashion-mnist-mini`,
//! upscaled bilinearly to 112x112 and tinted to colour, encoded with jpeg-encoder; then the same
//! pictures with per-pixel noise (±`--noise`, default 24 grey levels) so that they compress like
//! camera face crops (about 3x the bytes of the smooth ones, and slower to decode). Also times
//! the parallel batch loader (`load_batch` on every thread). Ends with one JSON line.

use jpeg_encoder::{ColorType, Encoder, SamplingFactor};
use lsc_benches::{Flags, JsonLine, median_secs, peak_rss_mb};
use lsc_data::{
    Base64Shards, Dataset, LoaderOptions, Record, decode_rgb, decode_rgb_into, load_batch, to_chw_normalized,
};
use std::path::Path;

const USAGE: &str = "usage: bench-data [--images N] [--reps R] [--noise X]";
const SIDE: usize = 112;

struct Args {
    images: usize,
    reps: usize,
    noise: f32,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        images: 512,
        reps: 5,
        noise: 24.0,
    };
    let mut f = Flags::from_env(USAGE);
    while let Some(flag) = f.next() {
        match flag.as_str() {
            "--images" => a.images = f.value()?,
            "--reps" => a.reps = f.value()?,
            "--noise" => a.noise = f.value()?,
            _ => return Err(f.unknown()),
        }
    }
    if a.images == 0 || a.reps == 0 {
        return Err(format!("--images and --reps must be positive\n{USAGE}"));
    }
    Ok(a)
}

/// `n` 112x112 RGB pictures: Fashion-MNIST images upscaled bilinearly and tinted, plus uniform
/// noise of amplitude `noise` from a fixed hash (0: smooth).
fn pictures(n: usize, noise: f32) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/fashion-mnist-mini/train");
    let ds = Base64Shards::open(&dir).expect("datasets/fashion-mnist-mini/train");
    (0..n)
        .map(|k| {
            let i = (k * 7919) % ds.len();
            let (grey, h, w) = decode_rgb(&ds.record(i).expect("record").image).expect("decodes");
            let tint = [(k * 37) % 96, (k * 53) % 96, (k * 71) % 96];
            let mut out = Vec::with_capacity(SIDE * SIDE * 3);
            for y in 0..SIDE {
                let sy = ((y as f32 + 0.5) * h as f32 / SIDE as f32 - 0.5).clamp(0.0, (h - 1) as f32);
                let (y0, fy) = (sy as usize, sy.fract());
                let y1 = (y0 + 1).min(h - 1);
                for x in 0..SIDE {
                    let sx = ((x as f32 + 0.5) * w as f32 / SIDE as f32 - 0.5).clamp(0.0, (w - 1) as f32);
                    let (x0, fx) = (sx as usize, sx.fract());
                    let x1 = (x0 + 1).min(w - 1);
                    let px = |yy: usize, xx: usize| grey[(yy * w + xx) * 3] as f32;
                    let top = px(y0, x0) + (px(y0, x1) - px(y0, x0)) * fx;
                    let bot = px(y1, x0) + (px(y1, x1) - px(y1, x0)) * fx;
                    let v = top + (bot - top) * fy;
                    for (c, t) in tint.into_iter().enumerate() {
                        let mut h = ((k * SIDE + y) * SIDE + x) as u64 * 3 + c as u64;
                        h = (h ^ (h >> 31)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                        h ^= h >> 29;
                        let n = noise * ((h >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0);
                        let p = v * (255.0 - t as f32) / 255.0 + t as f32 + n;
                        out.push(p.round().clamp(0.0, 255.0) as u8);
                    }
                }
            }
            out
        })
        .collect()
}

fn encode(rgb: &[u8], sampling: SamplingFactor, progressive: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut e = Encoder::new(&mut out, 90);
    e.set_sampling_factor(sampling);
    e.set_progressive(progressive);
    e.encode(rgb, SIDE as u16, SIDE as u16, ColorType::Rgb)
        .expect("encodes");
    out
}

/// One thread's images/s for: decode only, normalise + flip only, and both.
fn per_core(jpegs: &[Vec<u8>], reps: usize) -> (f64, f64, f64) {
    let n = jpegs.len();
    let mut rgb = Vec::new();
    let mut out = vec![0.0f32; 3 * SIDE * SIDE];
    let decode = median_secs(1, reps, || {
        for j in jpegs {
            decode_rgb_into(j, &mut rgb).expect("decodes");
        }
    });
    decode_rgb_into(&jpegs[0], &mut rgb).expect("decodes");
    let norm = median_secs(1, reps, || {
        for k in 0..n {
            to_chw_normalized(&rgb, SIDE, SIDE, k % 2 == 1, &mut out);
        }
        std::hint::black_box(&out);
    });
    let both = median_secs(1, reps, || {
        for (k, j) in jpegs.iter().enumerate() {
            let (h, w) = decode_rgb_into(j, &mut rgb).expect("decodes");
            to_chw_normalized(&rgb, h, w, k % 2 == 1, &mut out);
        }
        std::hint::black_box(&out);
    });
    (n as f64 / decode, n as f64 / norm, n as f64 / both)
}

/// Records held in memory.
struct Mem(Vec<Record>);

impl Dataset for Mem {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn record(&self, i: usize) -> Result<Record, lsc_data::DataError> {
        Ok(self.0[i].clone())
    }
    fn locate(&self, i: usize) -> String {
        format!("mem:{}", i + 1)
    }
}

fn main() {
    let a = lsc_benches::args_or_exit(parse());
    let smooth = pictures(a.images, 0.0);
    let textured = pictures(a.images, a.noise);
    let variants = [
        ("baseline_420", SamplingFactor::F_2_2, false, &smooth),
        ("progressive_420", SamplingFactor::F_2_2, true, &smooth),
        ("baseline_444", SamplingFactor::F_1_1, false, &smooth),
        ("textured_baseline_420", SamplingFactor::F_2_2, false, &textured),
        ("textured_progressive_420", SamplingFactor::F_2_2, true, &textured),
        ("textured_baseline_444", SamplingFactor::F_1_1, false, &textured),
    ];
    let threads = rayon::current_num_threads();
    let mut j = JsonLine::default();
    j.str("bench", "data");
    j.num("images", a.images as f64);
    j.num("threads", threads as f64);
    println!(
        "{} images {SIDE}x{SIDE} (Fashion-MNIST upscaled, tinted; textured: plus noise ±{}), JPEG quality 90; one thread unless noted",
        a.images, a.noise
    );
    for (name, sampling, progressive, pics) in variants {
        let jpegs: Vec<Vec<u8>> = pics.iter().map(|p| encode(p, sampling, progressive)).collect();
        let bytes = jpegs.iter().map(Vec::len).sum::<usize>() as f64 / jpegs.len() as f64;
        let (dec, norm, both) = per_core(&jpegs, a.reps);
        // The parallel loader over all threads (batches of 128, flip on).
        let ds = Mem(jpegs
            .iter()
            .map(|j| Record {
                image: j.clone(),
                label: 0,
            })
            .collect());
        let opts = LoaderOptions {
            batch_size: 128,
            ..LoaderOptions::default()
        };
        let idx: Vec<usize> = (0..ds.len()).collect();
        let loader = median_secs(1, a.reps, || {
            for chunk in idx.chunks(128) {
                std::hint::black_box(load_batch(&ds, chunk, &opts, 0).expect("loads"));
            }
        });
        let par = ds.len() as f64 / loader;
        println!(
            "{name:<24} {bytes:>6.0} B/image  decode {dec:>7.0}/s  flip+normalise {norm:>8.0}/s  \
             decode+flip+normalise {both:>7.0} images/s per core ({:.1}% in normalise)  \
             loader on {threads} threads {par:>7.0}/s ({:.0}/s per thread)",
            100.0 * (1.0 / norm) / (1.0 / both),
            par / threads as f64
        );
        j.num(&format!("{name}_bytes"), bytes);
        j.num(&format!("{name}_decode_per_s"), dec);
        j.num(&format!("{name}_normalise_per_s"), norm);
        j.num(&format!("{name}_images_per_s_per_core"), both);
        j.num(&format!("{name}_loader_images_per_s"), par);
    }
    j.num("target_baseline_420_per_core", 4000.0);
    j.num("peak_rss_mb", peak_rss_mb());
    println!("{}", j.finish());
}
