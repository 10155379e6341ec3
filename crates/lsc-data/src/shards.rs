//! PLSC base64 shards: the [`Dataset`] trait, the [`Base64Shards`] reader, [`write_shards`] and
//! [`verify`].
//!
//! A shard is a text file with one record per line, `<base64 of encoded image>\t<label>\n`
//! (PLSC's `base64_reader` order). A shard set is a directory holding `file_list.txt`, which names
//! one shard per line relative to its own directory.
//!
//! Strictness, decided once for every reader here:
//! * CRLF line ends and a missing final newline are accepted.
//! * An empty line anywhere in a shard is a bad record (so record `k` of a shard is always line
//!   `k + 1`); a file of zero bytes is a shard with no records.
//! * At open, every line's shape (one tab, non-empty image field) and label (a `u32`, surrounding
//!   spaces allowed) are checked; the first bad line fails the open, naming `file:line`.
//! * Base64 and the image itself are checked when a record is read (by the loader, or by
//!   [`verify`] for all records).
//! * Blank lines in `file_list.txt` are skipped; a listed shard that cannot be read is an error
//!   naming `file_list.txt:line`.

use crate::error::{DataError, RecordError};
use base64::Engine as _;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

/// The name of a shard set's list of shard files.
pub const FILE_LIST: &str = "file_list.txt";

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
type B64 = base64::engine::Simd;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
type B64 = base64::engine::GeneralPurpose;

/// Standard alphabet with canonical padding (what Python's `b64encode`/`b64decode` use); the
/// runtime-detected SIMD engine where the target has one.
static ENGINE: LazyLock<B64> = LazyLock::new(|| {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        base64::engine::Simd::standard(base64::engine::general_purpose::PAD)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        base64::engine::general_purpose::STANDARD
    }
});

/// A random-access set of labelled, encoded images.
pub trait Dataset: Send + Sync {
    /// The number of records.
    fn len(&self) -> usize;
    /// Whether there are no records.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Record `i` (encoded image bytes and label). Errors name [`Dataset::locate`]`(i)`.
    fn record(&self, i: usize) -> Result<Record, DataError>;
    /// Where record `i` comes from, as `path:line` (1-based), for error messages.
    fn locate(&self, i: usize) -> String;
}

/// One labelled sample: the encoded image (JPEG bytes) and its class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub image: Vec<u8>,
    pub label: u32,
}

/// One shard held in memory with its line index.
struct Shard {
    path: PathBuf,
    data: Vec<u8>,
    /// Start of each line, then `data.len()`: line `k` is `data[offsets[k]..offsets[k + 1]]`.
    offsets: Vec<u64>,
}

impl Shard {
    fn records(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Line `k` (0-based) without its `\n` or `\r\n`.
    fn line(&self, k: usize) -> &[u8] {
        let line = &self.data[self.offsets[k] as usize..self.offsets[k + 1] as usize];
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        line.strip_suffix(b"\r").unwrap_or(line)
    }

    fn locate(&self, k: usize) -> String {
        format!("{}:{}", self.path.display(), k + 1)
    }
}

/// Line starts of `data`, then `data.len()`. A final newline does not start an empty line.
fn line_offsets(data: &[u8]) -> Vec<u64> {
    let mut offsets = Vec::with_capacity(data.len() / 512 + 2);
    if !data.is_empty() {
        offsets.push(0);
        for (p, _) in data.iter().enumerate().filter(|&(_, &b)| b == b'\n') {
            if p + 1 < data.len() {
                offsets.push(p as u64 + 1);
            }
        }
    }
    offsets.push(data.len() as u64);
    offsets
}

/// Splits a line (without its line end) into the base64 field and the label.
fn parse_line(line: &[u8]) -> Result<(&[u8], u32), RecordError> {
    if line.is_empty() {
        return Err(RecordError::EmptyLine);
    }
    let tab = line.iter().position(|&b| b == b'\t').ok_or(RecordError::MissingTab)?;
    let (image, label) = (&line[..tab], &line[tab + 1..]);
    if label.contains(&b'\t') {
        return Err(RecordError::ExtraField);
    }
    if image.is_empty() {
        return Err(RecordError::EmptyImage);
    }
    let text = String::from_utf8_lossy(label);
    let label = text.trim_matches(|c: char| c == ' ').parse::<u32>().map_err(|_| {
        let mut shown: String = text.chars().take(40).collect();
        if text.chars().count() > 40 {
            shown.push('…');
        }
        RecordError::BadLabel(shown)
    })?;
    Ok((image, label))
}

/// The shards a dataset path names: `(shard path, location of its file-list line)`.
fn resolve(path: &Path) -> Result<Vec<(PathBuf, Option<String>)>, DataError> {
    let meta = std::fs::metadata(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let list = if meta.is_dir() {
        let list = path.join(FILE_LIST);
        if !list.is_file() {
            return Err(DataError::NoFileList {
                dir: path.to_path_buf(),
            });
        }
        list
    } else if path.file_name().is_some_and(|n| n == FILE_LIST) {
        path.to_path_buf()
    } else {
        return Ok(vec![(path.to_path_buf(), None)]);
    };
    let text = std::fs::read_to_string(&list).map_err(|source| DataError::Io {
        path: list.clone(),
        source,
    })?;
    let base = list.parent().unwrap_or(Path::new(""));
    let shards: Vec<_> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (base.join(l.trim()), Some(format!("{}:{}", list.display(), i + 1))))
        .collect();
    if shards.is_empty() {
        return Err(DataError::EmptyFileList { path: list });
    }
    Ok(shards)
}

fn read_shard(path: &Path, list_location: Option<String>) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| match list_location {
        Some(location) => DataError::Shard {
            location,
            shard: path.to_path_buf(),
            source,
        },
        None => DataError::Io {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// PLSC base64 shards held in memory, indexed by line at open.
///
/// Records are numbered in `file_list.txt` order, then line order within each shard.
pub struct Base64Shards {
    source: PathBuf,
    shards: Vec<Shard>,
    /// Global index of each shard's first record.
    starts: Vec<usize>,
    labels: Vec<u32>,
}

impl std::fmt::Debug for Base64Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Base64Shards")
            .field("source", &self.source)
            .field("shards", &self.shards.len())
            .field("records", &self.labels.len())
            .finish()
    }
}

impl Base64Shards {
    /// Opens a shard set: a directory holding `file_list.txt`, a `file_list.txt` itself, or a
    /// single shard file (any other file name). Reads every shard into memory, indexes its lines
    /// and checks each line's shape and label (see the module docs for what is an error).
    pub fn open(path: &Path) -> Result<Base64Shards, DataError> {
        let entries = resolve(path)?;
        let parsed: Vec<Result<(Shard, Vec<u32>), DataError>> = entries
            .into_par_iter()
            .map(|(shard_path, list_location)| {
                let data = read_shard(&shard_path, list_location)?;
                let shard = Shard {
                    path: shard_path,
                    offsets: line_offsets(&data),
                    data,
                };
                let labels = (0..shard.records())
                    .map(|k| {
                        parse_line(shard.line(k))
                            .map(|(_, label)| label)
                            .map_err(|kind| DataError::Record {
                                location: shard.locate(k),
                                kind,
                            })
                    })
                    .collect::<Result<Vec<u32>, DataError>>()?;
                Ok((shard, labels))
            })
            .collect();
        let mut shards = Vec::with_capacity(parsed.len());
        let mut starts = Vec::with_capacity(parsed.len());
        let mut labels = Vec::new();
        for p in parsed {
            let (shard, shard_labels) = p?;
            starts.push(labels.len());
            labels.extend_from_slice(&shard_labels);
            shards.push(shard);
        }
        Ok(Base64Shards {
            source: path.to_path_buf(),
            shards,
            starts,
            labels,
        })
    }

    /// The path this set was opened from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The shard files, in record order.
    pub fn files(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// Every record's label (checked at open), in record order.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// `(shard, line index within it)` of record `i < len`.
    fn find(&self, i: usize) -> (usize, usize) {
        let s = self.starts.partition_point(|&start| start <= i) - 1;
        (s, i - self.starts[s])
    }
}

impl Dataset for Base64Shards {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn record(&self, i: usize) -> Result<Record, DataError> {
        if i >= self.len() {
            return Err(DataError::OutOfRange {
                index: i,
                len: self.len(),
            });
        }
        let (s, k) = self.find(i);
        let shard = &self.shards[s];
        let error = |kind| DataError::Record {
            location: shard.locate(k),
            kind,
        };
        let (b64, label) = parse_line(shard.line(k)).map_err(error)?;
        let image = ENGINE.decode(b64).map_err(|e| error(RecordError::Base64(e)))?;
        Ok(Record { image, label })
    }

    fn locate(&self, i: usize) -> String {
        if i >= self.len() {
            return format!("{}[{i}] (out of range)", self.source.display());
        }
        let (s, k) = self.find(i);
        self.shards[s].locate(k)
    }
}

/// What [`write_shards`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardSummary {
    /// The shard set's directory (open it with [`Base64Shards::open`]).
    pub dir: PathBuf,
    /// The shard files, in `file_list.txt` order.
    pub files: Vec<PathBuf>,
    pub records: usize,
    /// Bytes written to the shards.
    pub bytes: u64,
    /// Records per label.
    pub label_counts: BTreeMap<u32, usize>,
}

/// Writes records (encoded image bytes, label) as PLSC base64 shards `out_dir/part-00000` …
/// plus `out_dir/file_list.txt`, creating `out_dir`.
///
/// Record `k` goes to shard `k % shards` (round robin, so shard sizes differ by at most one;
/// with one shard the input order is kept). Every file is written under a `.tmp` name and renamed
/// when complete, the file list last; on error the temporary files are removed. Shards
/// `part-NNNNN` left over from an earlier run with more shards are deleted.
pub fn write_shards(
    records: impl Iterator<Item = (Vec<u8>, u32)>,
    out_dir: &Path,
    shards: usize,
) -> Result<ShardSummary, DataError> {
    if shards == 0 {
        return Err(DataError::InvalidArgument(
            "the number of shards must be at least 1".into(),
        ));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    let names: Vec<String> = (0..shards).map(|s| format!("part-{s:05}")).collect();
    let finals: Vec<PathBuf> = names.iter().map(|n| out_dir.join(n)).collect();
    let temps: Vec<PathBuf> = names.iter().map(|n| out_dir.join(format!("{n}.tmp"))).collect();
    let list = out_dir.join(FILE_LIST);
    let list_tmp = out_dir.join(format!("{FILE_LIST}.tmp"));

    let write_all = || -> Result<ShardSummary, DataError> {
        let mut writers = temps
            .iter()
            .map(|t| {
                std::fs::File::create(t)
                    .map(|f| std::io::BufWriter::with_capacity(1 << 20, f))
                    .map_err(io(t))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut line = String::new();
        let (mut count, mut bytes) = (0usize, 0u64);
        let mut label_counts = BTreeMap::new();
        for (image, label) in records {
            let s = count % shards;
            line.clear();
            ENGINE.encode_string(&image, &mut line);
            line.push('\t');
            line.push_str(&label.to_string());
            line.push('\n');
            writers[s].write_all(line.as_bytes()).map_err(io(&temps[s]))?;
            bytes += line.len() as u64;
            count += 1;
            *label_counts.entry(label).or_insert(0) += 1;
        }
        for (w, t) in writers.into_iter().zip(&temps) {
            let file = w.into_inner().map_err(|e| io(t)(e.into_error()))?;
            file.sync_all().map_err(io(t))?;
        }
        for (t, f) in temps.iter().zip(&finals) {
            std::fs::rename(t, f).map_err(io(f))?;
        }
        let mut text = names.join("\n");
        text.push('\n');
        std::fs::write(&list_tmp, text).map_err(io(&list_tmp))?;
        std::fs::rename(&list_tmp, &list).map_err(io(&list))?;
        Ok(ShardSummary {
            dir: out_dir.to_path_buf(),
            files: finals.clone(),
            records: count,
            bytes,
            label_counts,
        })
    };
    let summary = write_all().inspect_err(|_| {
        for t in temps.iter().chain([&list_tmp]) {
            let _ = std::fs::remove_file(t);
        }
    })?;
    remove_stale_parts(out_dir, shards)?;
    Ok(summary)
}

/// Deletes `part-NNNNN` files (exactly five digits) numbered `>= shards` in `dir`.
fn remove_stale_parts(dir: &Path, shards: usize) -> Result<(), DataError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(digits) = name.to_str().and_then(|n| n.strip_prefix("part-")) else {
            continue;
        };
        if digits.len() == 5
            && digits.bytes().all(|b| b.is_ascii_digit())
            && digits.parse::<usize>().is_ok_and(|n| n >= shards)
        {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|source| DataError::Io { path, source })?;
        }
    }
    Ok(())
}

/// What [`verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub files: usize,
    /// Lines seen (good and bad).
    pub records: usize,
    /// Bad records plus listed shards that could not be read.
    pub bad: usize,
    /// Good records per label.
    pub label_counts: BTreeMap<u32, usize>,
    /// Good records per decoded image size `(h, w)`.
    pub sizes: BTreeMap<(usize, usize), usize>,
}

/// Reads and fully decodes (base64 and JPEG) every record of a shard set, calling `on_bad` for
/// each bad record or unreadable listed shard and carrying on. Fails only when `path` itself
/// cannot be resolved (missing, no `file_list.txt`, empty list).
pub fn verify(path: &Path, mut on_bad: impl FnMut(&DataError)) -> Result<VerifyReport, DataError> {
    let mut report = VerifyReport::default();
    for (shard_path, list_location) in resolve(path)? {
        let data = match read_shard(&shard_path, list_location) {
            Ok(d) => d,
            Err(e) => {
                report.bad += 1;
                on_bad(&e);
                continue;
            }
        };
        report.files += 1;
        let shard = Shard {
            path: shard_path,
            offsets: line_offsets(&data),
            data,
        };
        let results: Vec<Result<(u32, usize, usize), RecordError>> = (0..shard.records())
            .into_par_iter()
            .map(|k| {
                let (b64, label) = parse_line(shard.line(k))?;
                let bytes = ENGINE.decode(b64)?;
                let (_, h, w) = crate::image::decode_rgb(&bytes)?;
                Ok((label, h, w))
            })
            .collect();
        report.records += results.len();
        for (k, r) in results.into_iter().enumerate() {
            match r {
                Ok((label, h, w)) => {
                    *report.label_counts.entry(label).or_insert(0) += 1;
                    *report.sizes.entry((h, w)).or_insert(0) += 1;
                }
                Err(kind) => {
                    report.bad += 1;
                    on_bad(&DataError::Record {
                        location: shard.locate(k),
                        kind,
                    });
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{TempDir, grey_jpeg};

    fn b64(bytes: &[u8]) -> String {
        ENGINE.encode(bytes)
    }

    fn err_text<T: std::fmt::Debug>(r: Result<T, DataError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn crlf_and_missing_final_newline() {
        let dir = TempDir::new("crlf");
        let (a, b) = (grey_jpeg(4, 4, 1), grey_jpeg(4, 4, 2));
        let path = dir.path().join("shard");
        std::fs::write(&path, format!("{}\t3\r\n{}\t 7", b64(&a), b64(&b))).unwrap();
        let ds = Base64Shards::open(&path).unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.labels(), &[3, 7]);
        assert_eq!(ds.record(0).unwrap(), Record { image: a, label: 3 });
        assert_eq!(ds.record(1).unwrap(), Record { image: b, label: 7 });
        assert_eq!(ds.locate(1), format!("{}:2", path.display()));
        assert!(matches!(ds.record(2), Err(DataError::OutOfRange { index: 2, len: 2 })));
        // An empty file is an empty shard.
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "").unwrap();
        assert!(Base64Shards::open(&empty).unwrap().is_empty());
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let dir = TempDir::new("badlines");
        let good = format!("{}\t1\n", b64(&grey_jpeg(4, 4, 0)));
        let path = dir.path().join("s");
        let cases = [
            ("x\t-1\n", "label `-1`"),
            ("x\t4294967296\n", "label `4294967296`"),
            ("x\tcat\n", "label `cat`"),
            ("\n", "empty line"),
            ("\r\n", "empty line"),
            ("abc 1\n", "no tab"),
            ("a\t1\t2\n", "more than one tab"),
            ("\t1\n", "empty base64"),
        ];
        for (bad, what) in cases {
            std::fs::write(&path, format!("{good}{good}{bad}{good}")).unwrap();
            let e = err_text(Base64Shards::open(&path));
            assert!(
                e.starts_with(&format!("{}:3: ", path.display())) && e.contains(what),
                "{bad:?}: {e}"
            );
        }
        // Corrupt base64 is found when the record is read.
        std::fs::write(&path, format!("{good}{good}@@@notbase64!\t2\n")).unwrap();
        let ds = Base64Shards::open(&path).unwrap();
        ds.record(1).unwrap();
        let e = err_text(ds.record(2));
        assert!(e.starts_with(&format!("{}:3: bad base64", path.display())), "{e}");
    }

    #[test]
    fn file_list_orders_records_and_names_bad_entries() {
        let dir = TempDir::new("filelist");
        let mut want = Vec::new();
        for (s, n) in [("a", 3), ("b", 0), ("c", 2)] {
            let mut text = String::new();
            for k in 0..n {
                let image = grey_jpeg(4, 4, want.len());
                text.push_str(&format!("{}\t{}\n", b64(&image), 10 + k));
                want.push(Record { image, label: 10 + k });
            }
            std::fs::write(dir.path().join(s), text).unwrap();
        }
        std::fs::write(dir.path().join(FILE_LIST), "a\n\nb\r\nc").unwrap();
        for path in [dir.path().to_path_buf(), dir.path().join(FILE_LIST)] {
            let ds = Base64Shards::open(&path).unwrap();
            assert_eq!(ds.files().len(), 3);
            let got: Vec<Record> = (0..ds.len()).map(|i| ds.record(i).unwrap()).collect();
            assert_eq!(got, want);
            assert_eq!(ds.locate(3), format!("{}:1", dir.path().join("c").display()));
        }
        std::fs::write(dir.path().join(FILE_LIST), "a\nmissing\n").unwrap();
        let e = err_text(Base64Shards::open(dir.path()));
        let list = dir.path().join(FILE_LIST);
        assert!(
            e.starts_with(&format!("{}:2: cannot read shard", list.display())),
            "{e}"
        );
        std::fs::write(&list, "\n  \n").unwrap();
        assert!(matches!(
            Base64Shards::open(dir.path()),
            Err(DataError::EmptyFileList { .. })
        ));
        std::fs::remove_file(&list).unwrap();
        assert!(matches!(
            Base64Shards::open(dir.path()),
            Err(DataError::NoFileList { .. })
        ));
    }

    #[test]
    fn write_shards_round_trips_round_robin() {
        let dir = TempDir::new("write");
        let out = dir.path().join("set");
        let records: Vec<(Vec<u8>, u32)> = (0..7).map(|i| (grey_jpeg(5, 3, i), i as u32)).collect();
        // A stale shard from an earlier, wider run is removed.
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("part-00005"), "junk").unwrap();
        let summary = write_shards(records.clone().into_iter(), &out, 3).unwrap();
        assert_eq!(summary.records, 7);
        assert_eq!(summary.files.len(), 3);
        assert_eq!(summary.label_counts.len(), 7);
        assert!(!out.join("part-00005").exists());
        let leftovers: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let ds = Base64Shards::open(&out).unwrap();
        // Shard s holds records s, s + 3, ...: file order is 0, 3, 6, 1, 4, 2, 5.
        let order = [0, 3, 6, 1, 4, 2, 5];
        for (i, &k) in order.iter().enumerate() {
            let r = ds.record(i).unwrap();
            assert_eq!((r.image, r.label), records[k]);
        }
        let bytes: u64 = summary.files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
        assert_eq!(bytes, summary.bytes);
        assert!(write_shards(records.into_iter(), &out, 0).is_err());
    }

    #[test]
    fn verify_reports_every_bad_record() {
        let dir = TempDir::new("verify");
        let good = |s| format!("{}\t{s}\n", b64(&grey_jpeg(6, 5, s)));
        let text = format!("{}{}x\tnope\n{}\t4\n{}", good(0), good(1), b64(b"not a jpeg"), good(9));
        std::fs::write(dir.path().join("s0"), text).unwrap();
        std::fs::write(dir.path().join(FILE_LIST), "s0\ngone\n").unwrap();
        let mut bad = Vec::new();
        let report = verify(dir.path(), |e| bad.push(e.to_string())).unwrap();
        assert_eq!(report.files, 1);
        assert_eq!(report.records, 5);
        assert_eq!(report.bad, 3);
        assert_eq!(report.label_counts, BTreeMap::from([(0, 1), (1, 1), (9, 1)]));
        assert_eq!(report.sizes, BTreeMap::from([((6, 5), 3)]));
        let s0 = dir.path().join("s0").display().to_string();
        assert!(bad[0].starts_with(&format!("{s0}:3: label `nope`")), "{bad:?}");
        assert!(bad[1].starts_with(&format!("{s0}:4: bad JPEG")), "{bad:?}");
        assert!(bad[2].contains("file_list.txt:2: cannot read shard"), "{bad:?}");
    }
}
