//! Packing datasets into PLSC base64 shards. [`pack_dataset`] copies any [`Dataset`] (RecordIO,
//! image list, image folder, shards) into a shard set through one [`ShardWriter`];
//! Fashion-MNIST from Debian's `dataset-fashion-mnist`
//! (`/usr/share/datasets/fashion-mnist/*-ubyte.gz`, IDX format) is encoded as greyscale
//! baseline JPEG and written with [`write_shards`].

use crate::error::{DataError, RecordError};
use crate::fsutil::{Skipped, write_atomic};
use crate::image::image_size;
use crate::shards::{Dataset, ShardSummary, ShardWriter, check_label, write_shards};
use rayon::prelude::*;
use std::io::Read;
use std::path::Path;

/// How [`pack_dataset`] treats its input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackOptions {
    /// Leave bad records out (counted) instead of failing.
    pub skip_bad: bool,
    /// Labels must be `< num_classes`.
    pub num_classes: Option<usize>,
    /// Decode every image fully before writing it (otherwise only its headers are read).
    pub decode: bool,
}

/// The file beside `file_list.txt` naming each class: `<label>\t<name>` per line.
pub const CLASSES_TXT: &str = "classes.txt";

/// Records packed per parallel round.
const PACK_ROUND: usize = 1024;

/// Copies every record of `ds` (in record order) into PLSC base64 shards `out_dir/part-NNNNN`
/// (round robin over `shards` files) plus `file_list.txt`, and `classes.txt` when
/// `class_names` is given. Each image's headers (or, with `decode`, all of it) are checked
/// first; a bad record fails the pack naming it, or with `skip_bad` is counted and left out.
/// Nothing appears under a final name unless the whole pack succeeds. `progress(done, total)`
/// is called after each round of records.
pub fn pack_dataset(
    ds: &dyn Dataset,
    out_dir: &Path,
    shards: usize,
    class_names: Option<&[String]>,
    opts: &PackOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<(ShardSummary, Skipped), DataError> {
    let n = ds.len();
    if n < shards {
        return Err(DataError::InvalidArgument(format!(
            "{shards} shards asked of {n} record(s): every shard needs at least one"
        )));
    }
    let mut writer = ShardWriter::create(out_dir, shards)?;
    let mut skipped = Skipped::default();
    for start in (0..n).step_by(PACK_ROUND) {
        let end = (start + PACK_ROUND).min(n);
        let round: Vec<Result<crate::Record, DataError>> = (start..end)
            .into_par_iter()
            .map(|i| {
                let r = ds.record(i)?;
                let error = |kind| DataError::Record {
                    location: ds.locate(i),
                    kind,
                };
                check_label(r.label, opts.num_classes).map_err(error)?;
                if opts.decode {
                    crate::decode_rgb(&r.image).map_err(|e| error(RecordError::Image(e)))?;
                } else {
                    image_size(&r.image).map_err(|e| error(RecordError::Image(e)))?;
                }
                Ok(r)
            })
            .collect();
        for r in round {
            match r {
                Ok(r) => writer.push(&r.image, r.label)?,
                Err(e) if opts.skip_bad && !matches!(e, DataError::OutOfRange { .. }) => skipped.push(e),
                Err(e) => return Err(e),
            }
        }
        progress(end, n);
    }
    if let Some(names) = class_names {
        let text: String = names
            .iter()
            .enumerate()
            .map(|(c, name)| format!("{c}\t{name}\n"))
            .collect();
        write_atomic(&out_dir.join(CLASSES_TXT), text.as_bytes())?;
    }
    Ok((writer.finish()?, skipped))
}

/// Where Debian's `dataset-fashion-mnist` installs the IDX files.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// Fashion-MNIST's class names, by label.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// An IDX array of unsigned bytes (element type 0x08).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idx {
    /// Dimension sizes, outermost first (e.g. `[60000, 28, 28]`).
    pub dims: Vec<usize>,
    /// Row-major elements.
    pub data: Vec<u8>,
}

impl Idx {
    /// The IDX magic number: `0x0800 | ndim` for unsigned bytes.
    pub fn magic(&self) -> u32 {
        0x0800 | self.dims.len() as u32
    }
}

/// Reads an IDX file of unsigned bytes, gunzipping it if it starts with the gzip magic.
/// Checks the magic (`00 00 08 ndim`), the big-endian dimensions and that the data length is
/// exactly their product; errors name the file.
pub fn read_idx(path: &Path) -> Result<Idx, DataError> {
    let bad = |reason: String| DataError::Idx {
        path: path.to_path_buf(),
        reason,
    };
    let raw = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("bad gzip data: {e}")))?;
        out
    } else {
        raw
    };
    if bytes.len() < 4 {
        return Err(bad(format!("too short for an IDX header ({} bytes)", bytes.len())));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(format!("not an IDX file (magic 0x{magic:08x})")));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "IDX element type 0x{:02x} is not unsigned byte (0x08)",
            bytes[2]
        )));
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(bad(format!(
            "truncated IDX header: {ndim} dimensions need {header} bytes, file has {}",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize)
        .collect();
    let want = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
    let got = bytes.len() - header;
    if got != want {
        return Err(bad(format!(
            "dimensions {dims:?} need {want} data bytes, the file has {got}"
        )));
    }
    let mut data = bytes;
    data.drain(..header);
    Ok(Idx { dims, data })
}

/// The indices of the first `per` samples of each class `0..classes`, in original order:
/// numpy's `sorted(concat(np.where(y == c)[0][:per] for c in range(classes)))`
/// (the rule of the PyTorch baseline `mini_train.py`, kept outside this repository). Labels `>= classes` are never picked.
pub fn class_balanced_subset(labels: &[u8], classes: usize, per: usize) -> Vec<usize> {
    let mut taken = vec![0usize; classes];
    labels
        .iter()
        .enumerate()
        .filter_map(|(i, &y)| {
            let t = taken.get_mut(y as usize)?;
            (*t < per).then(|| {
                *t += 1;
                i
            })
        })
        .collect()
}

/// Encodes a `h x w` greyscale image as a baseline JPEG (one component).
pub fn encode_grey_jpeg(
    pixels: &[u8],
    h: usize,
    w: usize,
    quality: u8,
) -> Result<Vec<u8>, jpeg_encoder::EncodingError> {
    let mut buf = Vec::with_capacity(1024);
    let mut encoder = jpeg_encoder::Encoder::new(&mut buf, quality);
    encoder.set_optimized_huffman_tables(true);
    let (w16, h16) = (
        u16::try_from(w).unwrap_or(u16::MAX),
        u16::try_from(h).unwrap_or(u16::MAX),
    );
    encoder.encode(pixels, w16, h16, jpeg_encoder::ColorType::Luma)?;
    Ok(buf)
}

/// What [`fashion_mnist`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackSummary {
    pub train: ShardSummary,
    pub test: ShardSummary,
}

/// Loads one split's images and labels, checking they agree and that labels are `< 10`.
fn load_split(src_dir: &Path, prefix: &str) -> Result<(Idx, Vec<u8>), DataError> {
    let images_path = src_dir.join(format!("{prefix}-images-idx3-ubyte.gz"));
    let labels_path = src_dir.join(format!("{prefix}-labels-idx1-ubyte.gz"));
    let images = read_idx(&images_path)?;
    if images.dims.len() != 3 {
        return Err(DataError::Idx {
            path: images_path,
            reason: format!(
                "expected IDX images (magic 0x00000803), found magic 0x{:08x}",
                images.magic()
            ),
        });
    }
    let labels = read_idx(&labels_path)?;
    if labels.dims.len() != 1 {
        return Err(DataError::Idx {
            path: labels_path,
            reason: format!(
                "expected IDX labels (magic 0x00000801), found magic 0x{:08x}",
                labels.magic()
            ),
        });
    }
    if labels.dims[0] != images.dims[0] {
        return Err(DataError::Idx {
            path: labels_path,
            reason: format!(
                "{} labels for the {} images of {}",
                labels.dims[0],
                images.dims[0],
                images_path.display()
            ),
        });
    }
    if let Some(i) = labels.data.iter().position(|&y| y >= 10) {
        return Err(DataError::Idx {
            path: labels_path,
            reason: format!(
                "label {} of item {i} is not a Fashion-MNIST class (0..=9)",
                labels.data[i]
            ),
        });
    }
    Ok((images, labels.data))
}

/// Converts Fashion-MNIST's IDX files in `src_dir` (`{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`)
/// into PLSC base64 shard sets `out_dir/train` and `out_dir/test`.
///
/// `per_class = Some((train, test))` keeps only the first `train` / `test` images of each class,
/// in original order ([`class_balanced_subset`]); `None` keeps everything. Each image is a
/// greyscale baseline JPEG at `quality` (1..=100), written round-robin into `shards` files per
/// split. Progress goes to stderr.
pub fn fashion_mnist(
    src_dir: &Path,
    out_dir: &Path,
    per_class: Option<(usize, usize)>,
    shards: usize,
    quality: u8,
) -> Result<PackSummary, DataError> {
    if !(1..=100).contains(&quality) {
        return Err(DataError::InvalidArgument(format!(
            "JPEG quality must be 1..=100, got {quality}"
        )));
    }
    if shards == 0 {
        return Err(DataError::InvalidArgument(
            "the number of shards must be at least 1".into(),
        ));
    }
    let mut summaries = Vec::with_capacity(2);
    for (split, prefix, per) in [
        ("train", "train", per_class.map(|p| p.0)),
        ("test", "t10k", per_class.map(|p| p.1)),
    ] {
        let (images, labels) = load_split(src_dir, prefix)?;
        let (n, h, w) = (images.dims[0], images.dims[1], images.dims[2]);
        let keep: Vec<usize> = match per {
            Some(per) => class_balanced_subset(&labels, 10, per),
            None => (0..n).collect(),
        };
        eprintln!(
            "fashion-mnist {split}: {n} images {h}x{w}; encoding {} as grey JPEG q{quality} ...",
            keep.len()
        );
        let images_path = src_dir.join(format!("{prefix}-images-idx3-ubyte.gz"));
        let encoded = keep
            .par_iter()
            .map(|&i| {
                encode_grey_jpeg(&images.data[i * h * w..(i + 1) * h * w], h, w, quality).map_err(|source| {
                    DataError::Encode {
                        what: format!("{} image {i}", images_path.display()),
                        source,
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let dir = out_dir.join(split);
        let summary = write_shards(
            encoded.into_iter().zip(keep.iter().map(|&i| labels[i] as u32)),
            &dir,
            shards,
        )?;
        eprintln!(
            "fashion-mnist {split}: wrote {} records to {} ({} shard{}, {:.2} MB)",
            summary.records,
            dir.display(),
            summary.files.len(),
            if summary.files.len() == 1 { "" } else { "s" },
            summary.bytes as f64 / 1e6
        );
        summaries.push(summary);
    }
    let test = summaries.pop().expect("two splits");
    let train = summaries.pop().expect("two splits");
    Ok(PackSummary { train, test })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shards::{Base64Shards, Dataset};
    use crate::testutil::TempDir;
    use lsc_tensor::Rng;
    use std::io::Write;
    use std::path::PathBuf;

    fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = magic.to_be_bytes().to_vec();
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(data);
        b
    }

    fn write_gz(path: &Path, bytes: &[u8]) {
        let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), Default::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap();
    }

    /// A fake Fashion-MNIST split of `n` `h x w` images with the given labels.
    fn fake_split(dir: &Path, prefix: &str, labels: &[u8], h: usize, w: usize) -> Vec<u8> {
        let n = labels.len();
        let pixels: Vec<u8> = (0..n * h * w).map(|i| ((i / (h * w)) * 20 + i % 7) as u8).collect();
        write_gz(
            &dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
            &idx_bytes(0x803, &[n as u32, h as u32, w as u32], &pixels),
        );
        write_gz(
            &dir.join(format!("{prefix}-labels-idx1-ubyte.gz")),
            &idx_bytes(0x801, &[n as u32], labels),
        );
        pixels
    }

    #[test]
    fn read_idx_parses_and_validates() {
        let dir = TempDir::new("idx");
        let p = dir.path().join("x.gz");
        write_gz(
            &p,
            &idx_bytes(0x803, &[2, 3, 2], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
        );
        let idx = read_idx(&p).unwrap();
        assert_eq!(idx.dims, vec![2, 3, 2]);
        assert_eq!(idx.data, (1..=12).collect::<Vec<u8>>());
        assert_eq!(idx.magic(), 0x803);
        // Uncompressed works too.
        let raw = dir.path().join("raw");
        std::fs::write(&raw, idx_bytes(0x801, &[3], &[7, 8, 9])).unwrap();
        assert_eq!(read_idx(&raw).unwrap().dims, vec![3]);
        let cases: [(Vec<u8>, &str); 4] = [
            (idx_bytes(0x1234_0801, &[1], &[0]), "not an IDX file"),
            (idx_bytes(0x0d01, &[1], &[0; 4]), "is not unsigned byte"),
            (
                idx_bytes(0x803, &[2, 2, 2], &[0; 7]),
                "need 8 data bytes, the file has 7",
            ),
            (vec![0, 0, 8, 3, 0, 0], "truncated IDX header"),
        ];
        for (bytes, what) in cases {
            write_gz(&p, &bytes);
            let e = read_idx(&p).unwrap_err().to_string();
            assert!(e.starts_with(&p.display().to_string()) && e.contains(what), "{e}");
        }
        std::fs::write(&p, [0x1f, 0x8b, 1, 2, 3]).unwrap();
        assert!(read_idx(&p).unwrap_err().to_string().contains("bad gzip"));
        assert!(matches!(
            read_idx(&dir.path().join("absent")),
            Err(DataError::Io { .. })
        ));
    }

    #[test]
    fn subset_matches_the_numpy_rule() {
        let mut rng = Rng::new(5);
        let labels: Vec<u8> = (0..2000).map(|_| rng.below(12) as u8).collect();
        for per in [0, 1, 7, 100, 10_000] {
            // np.concatenate([np.where(y == c)[0][:per] for c in range(10)]); keep.sort()
            let mut want: Vec<usize> = (0..10u8)
                .flat_map(|c| {
                    labels
                        .iter()
                        .enumerate()
                        .filter(move |&(_, &y)| y == c)
                        .map(|(i, _)| i)
                        .take(per)
                })
                .collect();
            want.sort_unstable();
            assert_eq!(class_balanced_subset(&labels, 10, per), want, "per {per}");
        }
    }

    #[test]
    fn fashion_mnist_packs_and_round_trips() {
        let dir = TempDir::new("pack");
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let train_labels: Vec<u8> = (0..30).map(|i| (i * 7 % 10) as u8).collect();
        let test_labels: Vec<u8> = (0..12).map(|i| (i % 10) as u8).collect();
        let (h, w) = (4, 3);
        let train_px = fake_split(&src, "train", &train_labels, h, w);
        fake_split(&src, "t10k", &test_labels, h, w);
        let out = dir.path().join("out");
        let summary = fashion_mnist(&src, &out, Some((2, 1)), 2, 95).unwrap();
        assert_eq!(summary.train.records, 20);
        assert_eq!(summary.test.records, 10);
        assert!(summary.train.label_counts.values().all(|&c| c == 2));
        let keep = class_balanced_subset(&train_labels, 10, 2);
        let ds = Base64Shards::open(&out.join("train")).unwrap();
        assert_eq!(ds.len(), 20);
        assert_eq!(ds.files().len(), 2);
        // Round robin over 2 shards: shard 0 holds kept samples 0, 2, ..., shard 1 the rest.
        let order: Vec<usize> = (0..20).step_by(2).chain((1..20).step_by(2)).collect();
        for (i, &k) in order.iter().enumerate() {
            let r = ds.record(i).unwrap();
            let src_i = keep[k];
            assert_eq!(r.label, train_labels[src_i] as u32);
            let (rgb, dh, dw) = crate::decode_rgb(&r.image).unwrap();
            assert_eq!((dh, dw), (h, w));
            for (p, &orig) in rgb.chunks_exact(3).zip(&train_px[src_i * h * w..]) {
                assert!(p[0].abs_diff(orig) <= 8, "{} vs {orig}", p[0]);
            }
        }
        // The whole set without a subset.
        let all = fashion_mnist(&src, &out, None, 1, 90).unwrap();
        assert_eq!((all.train.records, all.test.records), (30, 12));
        assert_eq!(Base64Shards::open(&out.join("test")).unwrap().len(), 12);
        assert!(!out.join("train").join("part-00001").exists());
        assert!(fashion_mnist(&src, &out, None, 1, 0).is_err());
        assert!(fashion_mnist(&src, &out, None, 0, 95).is_err());
    }

    #[test]
    fn fashion_mnist_rejects_inconsistent_files() {
        let dir = TempDir::new("packbad");
        fake_split(dir.path(), "train", &[1, 2, 3], 2, 2);
        fake_split(dir.path(), "t10k", &[1, 2], 2, 2);
        let labels = dir.path().join("train-labels-idx1-ubyte.gz");
        write_gz(&labels, &idx_bytes(0x801, &[2], &[1, 2]));
        let e = fashion_mnist(dir.path(), &dir.path().join("o"), None, 1, 95).unwrap_err();
        assert!(e.to_string().contains("2 labels for the 3 images"), "{e}");
        write_gz(&labels, &idx_bytes(0x801, &[3], &[1, 12, 3]));
        let e = fashion_mnist(dir.path(), &dir.path().join("o"), None, 1, 95).unwrap_err();
        assert!(
            e.to_string().starts_with(&labels.display().to_string()) && e.to_string().contains("label 12 of item 1"),
            "{e}"
        );
        write_gz(&labels, &idx_bytes(0x803, &[3, 1, 1], &[1, 2, 3]));
        let e = fashion_mnist(dir.path(), &dir.path().join("o"), None, 1, 95).unwrap_err();
        assert!(e.to_string().contains("expected IDX labels (magic 0x00000801)"), "{e}");
    }

    fn committed() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/fashion-mnist-mini")
    }

    #[test]
    fn committed_mini_dataset_is_complete() {
        for (split, n, per) in [("train", 6000, 600), ("test", 1000, 100)] {
            let ds = Base64Shards::open(&committed().join(split)).unwrap();
            assert_eq!(ds.len(), n, "{split}");
            let mut counts = [0usize; 10];
            for &y in ds.labels() {
                counts[y as usize] += 1;
            }
            assert_eq!(counts, [per; 10], "{split}");
            let opts = crate::VerifyOptions {
                decode: true,
                ..Default::default()
            };
            let report = crate::verify_dataset(&ds, &opts, |e| panic!("{e}"), |_, _| {});
            assert_eq!(report.records, n);
            assert_eq!(report.sizes.keys().collect::<Vec<_>>(), [&(28, 28)], "{split}");
        }
    }

    /// The committed subset is exactly `class_balanced_subset` of Debian's files (needs the
    /// `dataset-fashion-mnist` package; skipped without it, failed without it under
    /// `LSC_REQUIRE_FASHION_MNIST=1`, which CI sets after installing the package).
    #[test]
    fn committed_mini_dataset_matches_debian_source() {
        let src = Path::new(DEBIAN_FASHION_MNIST);
        if !src.join("train-labels-idx1-ubyte.gz").exists() {
            assert!(
                std::env::var("LSC_REQUIRE_FASHION_MNIST").as_deref() != Ok("1"),
                "LSC_REQUIRE_FASHION_MNIST=1 but {DEBIAN_FASHION_MNIST} is not installed"
            );
            eprintln!("SKIPPED: {DEBIAN_FASHION_MNIST} is not installed (apt-get install dataset-fashion-mnist)");
            return;
        }
        for (split, prefix, per) in [("train", "train", 600), ("test", "t10k", 100)] {
            let labels = read_idx(&src.join(format!("{prefix}-labels-idx1-ubyte.gz"))).unwrap();
            let images = read_idx(&src.join(format!("{prefix}-images-idx3-ubyte.gz"))).unwrap();
            let keep = class_balanced_subset(&labels.data, 10, per);
            let ds = Base64Shards::open(&committed().join(split)).unwrap();
            let want: Vec<u32> = keep.iter().map(|&i| labels.data[i] as u32).collect();
            assert_eq!(ds.labels(), &want[..], "{split}: single shard in original order");
            let (mut max, mut sum) = (0u8, 0u64);
            for (k, &src_i) in keep.iter().enumerate() {
                let (rgb, _, _) = crate::decode_rgb(&ds.record(k).unwrap().image).unwrap();
                let orig = &images.data[src_i * 784..(src_i + 1) * 784];
                for (p, &o) in rgb.chunks_exact(3).zip(orig) {
                    max = max.max(p[0].abs_diff(o));
                    sum += p[0].abs_diff(o) as u64;
                }
            }
            let mean = sum as f64 / (keep.len() * 784) as f64;
            eprintln!("{split}: JPEG q95 pixel error max {max}, mean {mean:.3}");
            assert!(max <= 16 && mean < 1.2, "{split}: max {max} mean {mean}");
        }
    }
}
