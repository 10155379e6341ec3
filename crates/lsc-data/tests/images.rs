//! Image decoding (PNG fixtures written by `tests/fixtures/make_png_bin_fixtures.py`; JPEG
//! baseline 4:2:0 and 4:4:4, progressive and greyscale made with the independent jpeg-encoder
//! crate) inside every dataset format, and the verification-set (`.bin`) readers against
//! Python-written pickles.

use lsc_data::bin::{parse_bin, read_bin, read_pair_list, write_bin};
use lsc_data::{
    Augment, Base64Shards, Dataset, DatasetFormat, ImageFolder, ImageList, LoaderOptions, ReadOptions, RecordIo,
    decode_rgb, image_size, load_batch_with, open_dataset,
};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The fixture script's `value(x, y, c)`.
fn value(x: usize, y: usize, c: usize) -> u8 {
    ((x * 37 + y * 91 + c * 53 + 11) % 256) as u8
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("lsc-data-images-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn png(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("png").join(name)).unwrap()
}

/// Expected RGB of each PNG fixture at (x, y).
fn png_expected(name: &str, x: usize, y: usize) -> [u8; 3] {
    const PALETTE: [[u8; 3]; 4] = [[10, 20, 30], [200, 100, 50], [0, 255, 0], [255, 255, 255]];
    match name {
        "grey8.png" | "grey_alpha.png" => [value(x, y, 0); 3],
        "grey1.png" => [if (x + y) % 2 == 1 { 255 } else { 0 }; 3],
        "rgb8.png" | "rgba8.png" | "rgb16.png" | "rgb8_adam7.png" => [value(x, y, 0), value(x, y, 1), value(x, y, 2)],
        "palette2.png" => PALETTE[(x + 2 * y) % 4],
        other => panic!("unknown fixture {other}"),
    }
}

const PNGS: [&str; 8] = [
    "grey8.png",
    "grey1.png",
    "grey_alpha.png",
    "rgb8.png",
    "rgba8.png",
    "rgb16.png",
    "palette2.png",
    "rgb8_adam7.png",
];

#[test]
fn png_fixtures_decode_to_the_expected_rgb() {
    for name in PNGS {
        let bytes = png(name);
        let (rgb, h, w) = decode_rgb(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = if name == "rgb8_adam7.png" { (9, 11) } else { (6, 7) };
        assert_eq!((h, w), want, "{name}");
        assert_eq!(image_size(&bytes).unwrap(), want, "{name}");
        for y in 0..h {
            for x in 0..w {
                let got = &rgb[(y * w + x) * 3..(y * w + x) * 3 + 3];
                assert_eq!(got, png_expected(name, x, y), "{name} at ({x}, {y})");
            }
        }
    }
}

#[test]
fn corrupt_pngs_are_errors() {
    let good = png("rgb8.png");
    // Cut inside the image data, and a flipped byte inside the compressed stream.
    for cut in [8, 20, 40, good.len() / 2, good.len() - 20] {
        assert!(decode_rgb(&good[..cut]).is_err(), "cut at {cut}");
    }
    let mut bad = good.clone();
    let idat = good.windows(4).position(|w| w == b"IDAT").unwrap();
    bad[idat + 6] ^= 0x5a;
    bad[idat + 7] ^= 0xa5;
    assert!(decode_rgb(&bad).is_err());
    // A header claiming a huge image is refused before any allocation.
    let mut huge = good.clone();
    huge[16..24].copy_from_slice(&[0, 0, 0x40, 0, 0, 0, 0x40, 0]);
    assert!(decode_rgb(&huge).is_err());
}

/// A smooth RGB test picture.
fn picture(h: usize, w: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(h * w * 3);
    for y in 0..h {
        for x in 0..w {
            v.extend([(x * 4 + y) as u8, (y * 5) as u8, (128 + x * 2 - y) as u8]);
        }
    }
    v
}

/// JPEG variants: (name, bytes, is grey).
fn jpegs(h: usize, w: usize) -> Vec<(&'static str, Vec<u8>, bool)> {
    use jpeg_encoder::{ColorType, Encoder, SamplingFactor};
    let rgb = picture(h, w);
    let grey: Vec<u8> = rgb.chunks_exact(3).map(|p| p[0]).collect();
    let enc = |pixels: &[u8], color, sampling: Option<SamplingFactor>, progressive| {
        let mut out = Vec::new();
        let mut e = Encoder::new(&mut out, 92);
        if let Some(s) = sampling {
            e.set_sampling_factor(s);
        }
        e.set_progressive(progressive);
        e.encode(pixels, w as u16, h as u16, color).unwrap();
        out
    };
    vec![
        (
            "baseline 4:2:0",
            enc(&rgb, ColorType::Rgb, Some(SamplingFactor::F_2_2), false),
            false,
        ),
        (
            "baseline 4:4:4",
            enc(&rgb, ColorType::Rgb, Some(SamplingFactor::F_1_1), false),
            false,
        ),
        (
            "progressive 4:2:0",
            enc(&rgb, ColorType::Rgb, Some(SamplingFactor::F_2_2), true),
            false,
        ),
        ("grey baseline", enc(&grey, ColorType::Luma, None, false), true),
        ("grey progressive", enc(&grey, ColorType::Luma, None, true), true),
    ]
}

#[test]
fn jpeg_variants_decode_close_to_the_source() {
    let (h, w) = (24, 32);
    let rgb = picture(h, w);
    for (name, bytes, grey) in jpegs(h, w) {
        let (out, dh, dw) = decode_rgb(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((dh, dw), (h, w), "{name}");
        let mut err = 0u64;
        for (p, q) in out.chunks_exact(3).zip(rgb.chunks_exact(3)) {
            if grey {
                assert!(p[0] == p[1] && p[1] == p[2], "{name}: grey replicated");
                err += p[0].abs_diff(q[0]) as u64;
            } else {
                err += (0..3).map(|c| p[c].abs_diff(q[c]) as u64).sum::<u64>();
            }
        }
        let mean = err as f64 / (h * w * if grey { 1 } else { 3 }) as f64;
        assert!(mean < 4.0, "{name}: mean error {mean}");
    }
}

/// Every image kind, as (name, encoded bytes).
fn all_images() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = jpegs(6, 7).into_iter().map(|(n, b, _)| (n.to_string(), b)).collect();
    v.extend(PNGS.iter().map(|n| (n.to_string(), png(n))));
    v
}

/// A single-chunk RecordIO file + index of `(label, image)` records (keys 0..).
fn write_rec(dir: &Path, records: &[(u32, Vec<u8>)]) -> PathBuf {
    const MAGIC: u32 = 0xced7_230a;
    let mut rec = Vec::new();
    let mut idx = String::new();
    for (key, (label, image)) in records.iter().enumerate() {
        let mut payload = Vec::new();
        payload.extend_from_slice(&0u32.to_le_bytes());
        payload.extend_from_slice(&(*label as f32).to_le_bytes());
        payload.extend_from_slice(&(key as u64).to_le_bytes());
        payload.extend_from_slice(&0u64.to_le_bytes());
        payload.extend_from_slice(image);
        assert!(
            !payload.chunks_exact(4).any(|c| c == MAGIC.to_le_bytes()),
            "this test writer does not split records"
        );
        idx.push_str(&format!("{key}\t{}\n", rec.len()));
        rec.extend_from_slice(&MAGIC.to_le_bytes());
        rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        rec.extend_from_slice(&payload);
        rec.resize(rec.len().next_multiple_of(4), 0);
    }
    let path = dir.join("data.rec");
    std::fs::write(&path, rec).unwrap();
    std::fs::write(dir.join("data.idx"), idx).unwrap();
    path
}

#[test]
fn every_image_kind_reads_in_every_format() {
    let tmp = TempDir::new("formats");
    let images = all_images();
    let records: Vec<(u32, Vec<u8>)> = images
        .iter()
        .enumerate()
        .map(|(k, (_, b))| (k as u32, b.clone()))
        .collect();
    // Shards.
    let shards = tmp.0.join("shards");
    lsc_data::write_shards(records.iter().map(|(l, b)| (b.clone(), *l)), &shards, 2).unwrap();
    // RecordIO.
    let rec_dir = tmp.0.join("rec");
    std::fs::create_dir_all(&rec_dir).unwrap();
    let rec = write_rec(&rec_dir, &records);
    // Image list and image folder: one file per image.
    let list_dir = tmp.0.join("list");
    let folder = tmp.0.join("folder");
    let mut list = String::new();
    for (k, (name, bytes)) in images.iter().enumerate() {
        let ext = if name.ends_with(".png") { "png" } else { "jpg" };
        std::fs::create_dir_all(list_dir.join("images")).unwrap();
        std::fs::write(list_dir.join(format!("images/{k:02}.{ext}")), bytes).unwrap();
        list.push_str(&format!("images/{k:02}.{ext} {k}\n"));
        let class = folder.join(format!("class{k:02}"));
        std::fs::create_dir_all(&class).unwrap();
        std::fs::write(class.join(format!("a.{ext}")), bytes).unwrap();
    }
    std::fs::write(list_dir.join("label.txt"), list).unwrap();
    std::fs::write(folder.join("README"), "not a class").unwrap();

    let sets: Vec<(&str, Box<dyn Dataset>)> = vec![
        ("shards", Box::new(Base64Shards::open(&shards).unwrap())),
        ("rec", Box::new(RecordIo::open(&rec).unwrap())),
        ("list", Box::new(ImageList::open(&list_dir).unwrap())),
        ("folder", Box::new(ImageFolder::open(&folder).unwrap())),
    ];
    for (format, ds) in &sets {
        assert_eq!(ds.len(), images.len(), "{format}");
        let mut seen = vec![false; images.len()];
        for i in 0..ds.len() {
            let r = ds.record(i).unwrap();
            let k = r.label as usize;
            assert_eq!(r.image, images[k].1, "{format} record {i}");
            let (_, h, w) = decode_rgb(&r.image).unwrap_or_else(|e| panic!("{format} {}: {e}", images[k].0));
            assert!((h, w) == (6, 7) || (h, w) == (9, 11), "{format} {}", images[k].0);
            seen[k] = true;
        }
        assert!(seen.iter().all(|&s| s), "{format}");
        // The loader resizes every kind to one size.
        let opts = LoaderOptions {
            batch_size: ds.len(),
            height: 8,
            width: 8,
            ..LoaderOptions::default()
        };
        let aug = Augment {
            resize: true,
            ..Augment::default()
        };
        let indices: Vec<usize> = (0..ds.len()).collect();
        let batch = load_batch_with(ds.as_ref(), &indices, &opts, &aug, 0).unwrap();
        assert_eq!(batch.images.shape(), &[images.len(), 3, 8, 8]);
        assert!(batch.images.data().iter().all(|v| v.abs() <= 1.0));
    }
    let folder_ds = ImageFolder::open(&folder).unwrap();
    assert_eq!(folder_ds.classes().len(), images.len());
    assert_eq!(folder_ds.ignored(), 1);
    // Auto-detection by path shape.
    for (path, format) in [
        (&shards, DatasetFormat::Shards),
        (&rec, DatasetFormat::RecordIo),
        (&list_dir, DatasetFormat::ImageList),
    ] {
        assert_eq!(DatasetFormat::detect(path), format);
        let opened = open_dataset(path, None, &ReadOptions::default()).unwrap();
        assert_eq!(opened.dataset.len(), images.len());
    }
    // The .bin verification set.
    let mut bin_images: Vec<Vec<u8>> = images.iter().map(|(_, b)| b.clone()).collect();
    if bin_images.len() % 2 == 1 {
        bin_images.push(images[0].1.clone());
    }
    let set = lsc_data::bin::VerificationSet {
        issame: (0..bin_images.len() / 2).map(|i| i % 2 == 0).collect(),
        images: bin_images,
    };
    let bin = tmp.0.join("all.bin");
    write_bin(&set, &bin).unwrap();
    let back = read_bin(&bin).unwrap();
    assert_eq!(back, set);
    for img in &back.images {
        decode_rgb(img).unwrap();
    }
}

#[test]
fn python_written_bins_read_the_same() {
    let want: Vec<Vec<u8>> = (0..4)
        .map(|k| std::fs::read(fixtures().join(format!("imagelist/images/img{k}.jpg"))).unwrap())
        .collect();
    for name in [
        "py2_p2.bin",
        "py3_p2.bin",
        "py3_p3.bin",
        "py3_p4.bin",
        "py3_p5.bin",
        "numpy1_p2.bin",
        "numpy2_p4.bin",
        "numpy2_p5.bin",
    ] {
        let set = read_bin(&fixtures().join("bin").join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(set.images, want, "{name}");
        assert_eq!(set.issame, [true, false], "{name}");
        assert!(!set.pair(1).unwrap().2);
    }
    // A numpy pickle whose GLOBAL names anything else is refused by name.
    let mut evil = std::fs::read(fixtures().join("bin/numpy1_p2.bin")).unwrap();
    let at = evil.windows(12).position(|w| w == b"_reconstruct").unwrap();
    evil[at..at + 12].copy_from_slice(b"_reconstrucX");
    let e = parse_bin(&evil, Path::new("evil.bin")).unwrap_err().to_string();
    assert!(e.contains("refusing GLOBAL numpy.core.multiarray._reconstrucX"), "{e}");
    // The pair list over the same images.
    let set = read_pair_list(&fixtures().join("bin/pairs.txt"), &fixtures().join("imagelist")).unwrap();
    assert_eq!(set.images, want);
    assert_eq!(set.issame, [true, false]);
}

#[test]
fn pair_list_errors_name_the_line() {
    let tmp = TempDir::new("pairs");
    let root = fixtures().join("imagelist");
    let cases = [
        (
            "images/img0.jpg\timages/img1.jpg\t1\nimages/img0.jpg\timages/img1.jpg\n",
            2,
            "got 2 tab-separated",
        ),
        ("images/img0.jpg\timages/img1.jpg\tyes\n", 1, "is not 0 or 1"),
        ("\n\nimages/img0.jpg\timages/nope.jpg\t0\n", 3, "cannot read image"),
        ("images/img0.jpg\t../imagelist/label.txt\t0\n", 1, "without `..`"),
        ("images/img0.jpg\tlabel.txt\t0\n", 1, "label.txt: "),
    ];
    for (text, line, what) in cases {
        let list = tmp.0.join("pairs.txt");
        std::fs::write(&list, text).unwrap();
        let e = read_pair_list(&list, &root).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}:{line}: ", list.display())) && e.contains(what),
            "{e}"
        );
    }
    std::fs::write(tmp.0.join("empty.txt"), "\n").unwrap();
    assert!(read_pair_list(&tmp.0.join("empty.txt"), &root).is_err());
}
