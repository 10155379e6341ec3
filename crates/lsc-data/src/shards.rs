//! PLSC base64 shards: the [`Dataset`] trait, the [`Base64Shards`] reader and the
//! [`ShardWriter`] / [`write_shards`] writer.
//!
//! A shard is a text file with one record per line, `<base64 of encoded image>\t<label>\n`
//! (PLSC's `base64_reader` order). A shard set is a directory holding `file_list.txt`, which names
//! one shard per line relative to its own directory.
//!
//! Strictness, decided once for every reader here:
//! * CRLF line ends and a missing final newline are accepted.
//! * An empty line anywhere in a shard is a bad record (so record `k` of a shard is always line
//!   `k + 1` unless lines were skipped); a file of zero bytes is a bad shard ("empty file").
//! * At open, every line's shape (one tab, non-empty image field) and label (a `u32`, surrounding
//!   spaces allowed, below `num_classes` when given) are checked; the first bad line fails the
//!   open, naming `file:line`, or with [`ReadOptions::skip_bad`] every bad line is left out of
//!   the index and counted in [`Base64Shards::skipped`].
//! * Base64 and the image itself are checked when a record is read (by the loader, or by
//!   [`verify_dataset`](crate::verify_dataset) for all records).
//! * Blank lines in `file_list.txt` are skipped; a listed shard that cannot be read is an error
//!   naming `file_list.txt:line`.
//!
//! Memory: a shard is not held in memory. The open streams each file once and keeps the byte
//! offset of every line (8 bytes per record) and every label (4 bytes); a record is read with
//! one positioned read (`pread`) of its line, so random access is O(1) and any number of
//! loader threads read one open file at once.

use crate::error::{DataError, RecordError};
use crate::fsutil::{AtomicFiles, Skipped, io_err, read_at, write_atomic};
use base64::Engine as _;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufRead;
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
pub(crate) static ENGINE: LazyLock<B64> = LazyLock::new(|| {
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

/// One labelled sample: the encoded image (JPEG or PNG bytes) and its class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub image: Vec<u8>,
    pub label: u32,
}

/// How the readers treat bad input at open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Leave bad lines (and empty or unreadable shards) out, counting them, instead of failing.
    pub skip_bad: bool,
    /// Labels must be `< num_classes`.
    pub num_classes: Option<usize>,
}

/// One shard: its open file and line index.
struct Shard {
    path: PathBuf,
    file: File,
    /// Start of every line, then the file length: line `j` is `lines[j]..lines[j + 1]`.
    lines: Vec<u64>,
    /// Record `k`'s line index, when some lines were skipped (else record `k` is line `k`).
    keep: Option<Vec<u32>>,
}

impl Shard {
    fn line_index(&self, k: usize) -> usize {
        match &self.keep {
            Some(keep) => keep[k] as usize,
            None => k,
        }
    }

    /// Record `k`'s line without its `\n` or `\r\n`.
    fn read_line(&self, k: usize) -> std::io::Result<Vec<u8>> {
        let j = self.line_index(k);
        let (start, end) = (self.lines[j], self.lines[j + 1]);
        let mut buf = vec![0u8; (end - start) as usize];
        read_at(&self.file, &mut buf, start)?;
        let len = trim_line_end(&buf).len();
        buf.truncate(len);
        Ok(buf)
    }

    fn locate(&self, k: usize) -> String {
        format!("{}:{}", self.path.display(), self.line_index(k) + 1)
    }
}

/// `line` without a final `\n`, then without a final `\r`.
pub(crate) fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// At most 40 characters of `text`, with `…` when cut.
pub(crate) fn shorten(text: &str) -> String {
    let mut shown: String = text.chars().take(40).collect();
    if text.chars().count() > 40 {
        shown.push('…');
    }
    shown
}

/// Parses a label field: a `u32`, surrounding spaces allowed.
pub(crate) fn parse_label(field: &[u8]) -> Result<u32, RecordError> {
    let text = String::from_utf8_lossy(field);
    text.trim_matches(' ')
        .parse::<u32>()
        .map_err(|_| RecordError::BadLabel(shorten(&text)))
}

/// Splits a line (without its line end) into the base64 field and the label; with
/// `label_first` the line is PLSC's tool input order `<label>\t<base64>`.
pub(crate) fn split_line(line: &[u8], label_first: bool) -> Result<(&[u8], u32), RecordError> {
    if line.is_empty() {
        return Err(RecordError::EmptyLine);
    }
    let tab = line.iter().position(|&b| b == b'\t').ok_or(RecordError::MissingTab)?;
    let (a, b) = (&line[..tab], &line[tab + 1..]);
    if b.contains(&b'\t') {
        return Err(RecordError::ExtraField);
    }
    let (image, label) = if label_first { (b, a) } else { (a, b) };
    if image.is_empty() {
        return Err(RecordError::EmptyImage);
    }
    Ok((image, parse_label(label)?))
}

/// Splits a line (without its line end) into the base64 field and the label.
fn parse_line(line: &[u8]) -> Result<(&[u8], u32), RecordError> {
    split_line(line, false)
}

/// Checks `label < num_classes` when a class count is given.
pub(crate) fn check_label(label: u32, num_classes: Option<usize>) -> Result<u32, RecordError> {
    match num_classes {
        Some(n) if label as usize >= n => Err(RecordError::LabelRange { label, num_classes: n }),
        _ => Ok(label),
    }
}

/// The shards a dataset path names: `(shard path, location of its file-list line)`.
pub(crate) fn resolve(path: &Path) -> Result<Vec<(PathBuf, Option<String>)>, DataError> {
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
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
    let text = std::fs::read_to_string(&list).map_err(io_err(&list))?;
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

/// Opens a listed shard; an error names the file-list line when there is one.
pub(crate) fn open_shard(path: &Path, list_location: Option<&str>) -> Result<File, DataError> {
    File::open(path).map_err(|source| match list_location {
        Some(location) => DataError::Shard {
            location: location.to_string(),
            shard: path.to_path_buf(),
            source,
        },
        None => DataError::Io {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Streams a shard once: line offsets, labels (checked), and the skipped lines.
fn scan_shard(
    path: PathBuf,
    list_location: Option<String>,
    opts: &ReadOptions,
) -> Result<(Option<Shard>, Vec<u32>, Skipped), DataError> {
    let mut skipped = Skipped::default();
    let file = match open_shard(&path, list_location.as_deref()) {
        Ok(f) => f,
        Err(e) if opts.skip_bad => {
            skipped.push(e);
            return Ok((None, Vec::new(), skipped));
        }
        Err(e) => return Err(e),
    };
    let mut reader = std::io::BufReader::with_capacity(1 << 20, &file);
    let mut lines = Vec::new();
    let mut keep = Vec::new();
    let mut labels = Vec::new();
    let mut buf = Vec::new();
    let mut at = 0u64;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(io_err(&path))?;
        if n == 0 {
            break;
        }
        let j = lines.len();
        lines.push(at);
        at += n as u64;
        let checked = parse_line(trim_line_end(&buf)).and_then(|(_, label)| check_label(label, opts.num_classes));
        match checked {
            Ok(label) => {
                labels.push(label);
                keep.push(u32::try_from(j).map_err(|_| {
                    DataError::InvalidArgument(format!("{}: more than 2^32 lines in one shard", path.display()))
                })?);
            }
            Err(kind) => {
                let e = DataError::Record {
                    location: format!("{}:{}", path.display(), j + 1),
                    kind,
                };
                skipped.skip_or_fail(e, opts.skip_bad)?;
            }
        }
    }
    drop(reader);
    lines.push(at);
    if lines.len() == 1 {
        let e = DataError::Record {
            location: path.display().to_string(),
            kind: RecordError::EmptyFile,
        };
        skipped.skip_or_fail(e, opts.skip_bad)?;
        return Ok((None, labels, skipped));
    }
    let keep = (keep.len() + 1 != lines.len()).then_some(keep);
    Ok((
        Some(Shard {
            path,
            file,
            lines,
            keep,
        }),
        labels,
        skipped,
    ))
}

/// PLSC base64 shards, indexed by line at open and read by positioned reads (see the module
/// docs).
///
/// Records are numbered in `file_list.txt` order, then line order within each shard.
pub struct Base64Shards {
    source: PathBuf,
    shards: Vec<Shard>,
    /// Global index of each shard's first record.
    starts: Vec<usize>,
    labels: Vec<u32>,
    skipped: Skipped,
}

impl std::fmt::Debug for Base64Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Base64Shards")
            .field("source", &self.source)
            .field("shards", &self.shards.len())
            .field("records", &self.labels.len())
            .field("skipped", &self.skipped.count)
            .finish()
    }
}

impl Base64Shards {
    /// Opens a shard set: a directory holding `file_list.txt`, a `file_list.txt` itself, or a
    /// single shard file (any other file name). Streams every shard once, indexing its lines
    /// and checking each line's shape and label (see the module docs for what is an error).
    pub fn open(path: &Path) -> Result<Base64Shards, DataError> {
        Base64Shards::open_with(path, &ReadOptions::default())
    }

    /// [`Base64Shards::open`] with a label range check and optional skipping of bad lines.
    pub fn open_with(path: &Path, opts: &ReadOptions) -> Result<Base64Shards, DataError> {
        let entries = resolve(path)?;
        let parsed: Vec<Result<_, DataError>> = entries
            .into_par_iter()
            .map(|(shard_path, list_location)| scan_shard(shard_path, list_location, opts))
            .collect();
        let mut shards = Vec::with_capacity(parsed.len());
        let mut starts = Vec::with_capacity(parsed.len());
        let mut labels = Vec::new();
        let mut skipped = Skipped::default();
        for p in parsed {
            let (shard, shard_labels, shard_skipped) = p?;
            skipped.extend(shard_skipped);
            if let Some(shard) = shard {
                starts.push(labels.len());
                labels.extend_from_slice(&shard_labels);
                shards.push(shard);
            }
        }
        Ok(Base64Shards {
            source: path.to_path_buf(),
            shards,
            starts,
            labels,
            skipped,
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

    /// What [`ReadOptions::skip_bad`] left out at open.
    pub fn skipped(&self) -> &Skipped {
        &self.skipped
    }

    pub(crate) fn skipped_mut(&mut self) -> &mut Skipped {
        &mut self.skipped
    }

    /// `(shard, record index within it)` of record `i < len`.
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
        let line = shard.read_line(k).map_err(|e| error(RecordError::Read(e)))?;
        let (b64, label) = parse_line(&line).map_err(error)?;
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

/// What [`write_shards`] / [`ShardWriter`] wrote.
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

/// Writes records as PLSC base64 shards `out_dir/part-00000` … plus `out_dir/file_list.txt`.
///
/// Record `k` goes to shard `k % shards` (round robin, so shard sizes differ by at most one;
/// with one shard the input order is kept). Every file is written under a `.tmp` name and
/// renamed by [`ShardWriter::finish`] when complete, the file list last; dropping the writer
/// unfinished (e.g. on an error) removes the temporary files. Shards `part-NNNNN` left over
/// from an earlier run with more shards are deleted by `finish`.
pub struct ShardWriter {
    dir: PathBuf,
    files: AtomicFiles,
    line: String,
    records: usize,
    bytes: u64,
    label_counts: BTreeMap<u32, usize>,
}

impl std::fmt::Debug for ShardWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardWriter")
            .field("dir", &self.dir)
            .field("records", &self.records)
            .finish()
    }
}

/// The name of shard `s` in a set written here.
pub fn part_name(s: usize) -> String {
    format!("part-{s:05}")
}

impl ShardWriter {
    /// Starts a set of `shards` shard files in `out_dir` (created if missing).
    pub fn create(out_dir: &Path, shards: usize) -> Result<ShardWriter, DataError> {
        if shards == 0 {
            return Err(DataError::InvalidArgument(
                "the number of shards must be at least 1".into(),
            ));
        }
        std::fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
        let finals = (0..shards).map(|s| out_dir.join(part_name(s))).collect();
        Ok(ShardWriter {
            dir: out_dir.to_path_buf(),
            files: AtomicFiles::create(finals, 1 << 20)?,
            line: String::new(),
            records: 0,
            bytes: 0,
            label_counts: BTreeMap::new(),
        })
    }

    /// Appends one record (encoded image bytes, label) to the next shard in turn.
    pub fn push(&mut self, image: &[u8], label: u32) -> Result<(), DataError> {
        let s = self.records % self.files.len();
        self.line.clear();
        ENGINE.encode_string(image, &mut self.line);
        self.line.push('\t');
        self.line.push_str(&label.to_string());
        self.line.push('\n');
        self.files.write(s, self.line.as_bytes())?;
        self.bytes += self.line.len() as u64;
        self.records += 1;
        *self.label_counts.entry(label).or_insert(0) += 1;
        Ok(())
    }

    /// Syncs and renames the shards into place, then writes `file_list.txt` (atomically) and
    /// removes stale `part-NNNNN` files of an earlier, wider set.
    pub fn finish(self) -> Result<ShardSummary, DataError> {
        let shards = self.files.len();
        let files = self.files.commit()?;
        write_file_list(&self.dir, &files)?;
        remove_stale_parts(&self.dir, shards)?;
        Ok(ShardSummary {
            dir: self.dir,
            files,
            records: self.records,
            bytes: self.bytes,
            label_counts: self.label_counts,
        })
    }
}

/// Writes `dir/file_list.txt` naming `files` (by file name), through a temporary file.
pub(crate) fn write_file_list(dir: &Path, files: &[PathBuf]) -> Result<(), DataError> {
    let mut text = String::new();
    for f in files {
        text.push_str(&f.file_name().unwrap_or_default().to_string_lossy());
        text.push('\n');
    }
    write_atomic(&dir.join(FILE_LIST), text.as_bytes())
}

/// Writes records (encoded image bytes, label) as PLSC base64 shards with a [`ShardWriter`]:
/// `out_dir/part-00000` … plus `out_dir/file_list.txt`, round robin.
pub fn write_shards(
    records: impl Iterator<Item = (Vec<u8>, u32)>,
    out_dir: &Path,
    shards: usize,
) -> Result<ShardSummary, DataError> {
    let mut w = ShardWriter::create(out_dir, shards)?;
    for (image, label) in records {
        w.push(&image, label)?;
    }
    w.finish()
}

/// Deletes `part-NNNNN` files (exactly five digits) numbered `>= shards` in `dir`.
pub(crate) fn remove_stale_parts(dir: &Path, shards: usize) -> Result<(), DataError> {
    let entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
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
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
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
        // An empty file is a bad shard, named; skipped under skip_bad.
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "").unwrap();
        let e = err_text(Base64Shards::open(&empty));
        assert_eq!(
            e,
            format!("{}: empty file: a shard must hold at least one record", empty.display())
        );
        let skip = ReadOptions {
            skip_bad: true,
            ..ReadOptions::default()
        };
        let ds = Base64Shards::open_with(&empty, &skip).unwrap();
        assert!(ds.is_empty());
        assert_eq!(ds.skipped().count, 1);
    }

    #[test]
    fn skip_bad_leaves_bad_lines_out_and_keeps_their_line_numbers() {
        let dir = TempDir::new("skipbad");
        let path = dir.path().join("s");
        let good = |s| format!("{}\t{s}\n", b64(&grey_jpeg(4, 4, s)));
        std::fs::write(&path, format!("{}\n{}x\tcat\n{}{}", good(0), good(1), good(7), good(2))).unwrap();
        let opts = ReadOptions {
            skip_bad: true,
            num_classes: Some(5),
        };
        let ds = Base64Shards::open_with(&path, &opts).unwrap();
        assert_eq!(ds.labels(), &[0, 1, 2]);
        assert_eq!(ds.skipped().count, 3);
        let shown: Vec<String> = ds.skipped().first.iter().map(|e| e.to_string()).collect();
        let p = path.display();
        assert!(shown[0].starts_with(&format!("{p}:2: empty line")), "{shown:?}");
        assert!(shown[1].starts_with(&format!("{p}:4: label `cat`")), "{shown:?}");
        assert_eq!(shown[2], format!("{p}:5: label 7 is outside 0..5 (num_classes)"));
        assert_eq!(ds.locate(1), format!("{p}:3"));
        assert_eq!(ds.locate(2), format!("{p}:6"));
        assert_eq!(ds.record(2).unwrap().label, 2);
        // Without skip_bad the first bad line fails the open.
        let e = err_text(Base64Shards::open_with(&path, &ReadOptions::default()));
        assert!(e.starts_with(&format!("{p}:2: empty line")), "{e}");
        // The label range alone.
        std::fs::write(&path, format!("{}{}", good(0), good(7))).unwrap();
        let e = err_text(Base64Shards::open_with(
            &path,
            &ReadOptions {
                skip_bad: false,
                num_classes: Some(7),
            },
        ));
        assert_eq!(e, format!("{p}:2: label 7 is outside 0..7 (num_classes)"));
    }

    #[test]
    fn records_are_read_from_disk_not_memory() {
        let dir = TempDir::new("pread");
        let path = dir.path().join("s");
        let img = grey_jpeg(4, 4, 3);
        std::fs::write(&path, format!("{}\t1\n{}\t2\n", b64(&img), b64(&img))).unwrap();
        let ds = Base64Shards::open(&path).unwrap();
        // Overwrite line 2's image bytes in place (same length): the reader sees the new bytes.
        let text = std::fs::read_to_string(&path).unwrap();
        let first_len = text.find('\n').unwrap() + 1;
        let mut bytes = text.into_bytes();
        bytes[first_len..first_len + 4].copy_from_slice(b"@@@@");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(ds.record(0).unwrap().image, img);
        let e = err_text(ds.record(1));
        assert!(e.starts_with(&format!("{}:2: bad base64", path.display())), "{e}");
        // Truncated after open: a read error naming the line.
        std::fs::write(&path, &bytes[..first_len + 3]).unwrap();
        let e = err_text(ds.record(1));
        assert!(
            e.starts_with(&format!("{}:2: cannot read the record", path.display())),
            "{e}"
        );
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
        for (s, n) in [("a", 3), ("b", 1), ("c", 2)] {
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
            assert_eq!(ds.locate(4), format!("{}:1", dir.path().join("c").display()));
        }
        // A listed shard that is empty is named.
        std::fs::write(dir.path().join("b"), "").unwrap();
        let e = err_text(Base64Shards::open(dir.path()));
        assert!(e.contains("/b: empty file"), "{e}");
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
}
