//! `shuffle_split`: a global shuffle of any number of base64 shard files into N per-rank
//! shards, in bounded memory (an external shuffle), deterministic from the seed.
//!
//! Scheme (two passes over the data):
//! 1. Every good input line gets a random 64-bit key, drawn in input order from
//!    `Rng::stream(seed, salt)`, and is appended with its key to one of K temporary bucket files:
//!    bucket `floor(key * K / 2^64)` (a range partition of the keys). K is the smallest number
//!    of buckets whose expected size is at most half the memory budget.
//! 2. Each bucket in turn is read into memory, sorted by key (ties, which have probability
//!    about `n^2 / 2^65`, keep input order), and dealt to the outputs in that order.
//!
//! The output order is therefore the input sorted by independent uniform keys: a uniformly
//! random permutation, and the same permutation for a seed whatever the memory budget (K only
//! decides how the sort is split). Output part `r` of `N` takes positions `[r·L, (r+1)·L)` of
//! the shuffled order, `L = ceil(M / N)`; with padding (PLSC's rule) the order is first
//! extended by its own head to `N·L` lines so every part has `L` lines, without padding the
//! parts take near-equal contiguous slices.
//!
//! Inputs are never modified or deleted (PLSC's tool deleted them), and may not live in the
//! output directory. Outputs are written under temporary names and renamed into place only
//! after every part is complete and synced; on an error nothing appears under a final name and
//! the temporary files and buckets are removed. Input lines may be in PLSC's tool order
//! `label\tbase64` (`label_first`); output lines are always `base64\tlabel\n`.

use crate::error::{DataError, RecordError};
use crate::fsutil::{AtomicFiles, Skipped, io_err};
use crate::shards::{check_label, open_shard, part_name, resolve, split_line, trim_line_end};
use lsc_tensor::Rng;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};

/// How [`shuffle_split`] runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShuffleOptions {
    pub seed: u64,
    /// Output files (ranks).
    pub parts: usize,
    /// Input lines are `label\tbase64` (PLSC's `process_base64_files.py` input order).
    pub label_first: bool,
    /// Leave bad lines out (counted) instead of failing.
    pub skip_bad: bool,
    /// Labels must be `< num_classes`.
    pub num_classes: Option<usize>,
    /// Bytes of data held in memory at once (the bucket being sorted is at most about half).
    pub memory_bytes: u64,
    /// Pad to `parts * ceil(M / parts)` lines by repeating the head of the shuffled order, so
    /// every part has the same number of lines (PLSC's rule).
    pub pad: bool,
}

impl Default for ShuffleOptions {
    fn default() -> Self {
        ShuffleOptions {
            seed: 0,
            parts: 1,
            label_first: false,
            skip_bad: false,
            num_classes: None,
            memory_bytes: 1 << 30,
            pad: true,
        }
    }
}

/// What [`shuffle_split`] wrote.
#[derive(Debug)]
pub struct ShuffleSummary {
    /// The output shards, in `file_list.txt` order.
    pub files: Vec<PathBuf>,
    /// Good input lines.
    pub records: usize,
    /// Lines repeated to pad the parts to equal length.
    pub padded: usize,
    /// Lines per part.
    pub part_lines: Vec<usize>,
    /// Temporary bucket files used.
    pub buckets: usize,
    /// Bad lines left out under `skip_bad`.
    pub skipped: Skipped,
}

/// The most bucket files open at once (file descriptors).
const MAX_BUCKETS: u64 = 512;

/// The temporary bucket directory; removed on drop.
struct TempBuckets(PathBuf);

impl Drop for TempBuckets {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn canonical(p: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(p).ok()
}

/// Shuffles the lines of `inputs` (shard files, `file_list.txt` files or shard-set
/// directories) into `opts.parts` shards `out_dir/part-NNNNN` plus `out_dir/file_list.txt`
/// (see the module docs). `progress(pass, done_bytes, total_bytes)` reports pass 1 (reading
/// inputs) and pass 2 (writing outputs).
pub fn shuffle_split(
    inputs: &[PathBuf],
    out_dir: &Path,
    opts: &ShuffleOptions,
    mut progress: impl FnMut(u8, u64, u64),
) -> Result<ShuffleSummary, DataError> {
    if opts.parts == 0 {
        return Err(DataError::InvalidArgument(
            "the number of parts must be at least 1".into(),
        ));
    }
    if inputs.is_empty() {
        return Err(DataError::InvalidArgument("no input files".into()));
    }
    let mut shards = Vec::new();
    for input in inputs {
        shards.extend(resolve(input)?);
    }
    std::fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let out_canon = canonical(out_dir).unwrap_or_else(|| out_dir.to_path_buf());
    let mut total = 0u64;
    for (path, _) in &shards {
        let meta = std::fs::metadata(path).map_err(io_err(path))?;
        total += meta.len();
        if canonical(path).is_some_and(|c| c.parent() == Some(out_canon.as_path())) {
            return Err(DataError::InvalidArgument(format!(
                "input {} is in the output directory {}; write the parts to another directory",
                path.display(),
                out_dir.display()
            )));
        }
    }
    let half = (opts.memory_bytes / 2).max(1);
    let k = total.div_ceil(half).max(1);
    if k > MAX_BUCKETS {
        return Err(DataError::InvalidArgument(format!(
            "{total} bytes of input with a memory budget of {} bytes needs {k} temporary buckets (at most {MAX_BUCKETS}); raise the memory budget",
            opts.memory_bytes
        )));
    }
    let k = k as usize;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // Bucket directories left by a run that was killed (a live run in the same directory would
    // be racing on the same outputs anyway).
    if let Ok(entries) = std::fs::read_dir(out_dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(".lsc-shuffle-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let tmp = TempBuckets(out_dir.join(format!(".lsc-shuffle-{}-{nonce}", std::process::id())));
    std::fs::create_dir(&tmp.0).map_err(io_err(&tmp.0))?;

    // Pass 1: key every good line and append it to its bucket.
    let bucket_paths: Vec<PathBuf> = (0..k).map(|b| tmp.0.join(format!("bucket-{b:05}"))).collect();
    let buf_cap = ((opts.memory_bytes / 4) / k as u64).clamp(4096, 1 << 20) as usize;
    let mut buckets = bucket_paths
        .iter()
        .map(|p| {
            std::fs::File::create(p)
                .map(|f| std::io::BufWriter::with_capacity(buf_cap, f))
                .map_err(io_err(p))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut rng = Rng::stream(opts.seed, 0x5AFF_1E5E_ED00_0001);
    let mut skipped = Skipped::default();
    let mut records = 0usize;
    let mut done = 0u64;
    let mut line = Vec::new();
    let mut entry = Vec::new();
    for (path, list_location) in &shards {
        let file = open_shard(path, list_location.as_deref())?;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        let mut line_no = 0usize;
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).map_err(io_err(path))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            done += n as u64;
            let checked = split_line(trim_line_end(&line), opts.label_first)
                .and_then(|(image, label)| Ok((image, check_label(label, opts.num_classes)?)));
            let (image, label) = match checked {
                Ok(v) => v,
                Err(kind) => {
                    let e = DataError::Record {
                        location: format!("{}:{line_no}", path.display()),
                        kind,
                    };
                    skipped.skip_or_fail(e, opts.skip_bad)?;
                    continue;
                }
            };
            let key = rng.next_u64();
            let b = ((key as u128 * k as u128) >> 64) as usize;
            entry.clear();
            entry.extend_from_slice(&key.to_le_bytes());
            entry.extend_from_slice(image);
            entry.push(b'\t');
            entry.extend_from_slice(label.to_string().as_bytes());
            entry.push(b'\n');
            buckets[b].write_all(&entry).map_err(io_err(&bucket_paths[b]))?;
            records += 1;
            if records.is_multiple_of(4096) {
                progress(1, done, total);
            }
        }
        if line_no == 0 {
            let e = DataError::Record {
                location: path.display().to_string(),
                kind: RecordError::EmptyFile,
            };
            skipped.skip_or_fail(e, opts.skip_bad)?;
        }
    }
    for (w, p) in buckets.into_iter().zip(&bucket_paths) {
        w.into_inner().map_err(|e| io_err(p)(e.into_error()))?;
    }
    progress(1, total, total);
    if records == 0 {
        return Err(DataError::InvalidArgument("the inputs hold no good record".into()));
    }

    // Pass 2: sort each bucket by key and deal the lines out.
    let n = opts.parts;
    if records < n {
        return Err(DataError::InvalidArgument(format!(
            "--parts {n} is more than the {records} good line(s) of the inputs: every part needs at least one"
        )));
    }
    let per = records.div_ceil(n);
    let padded = if opts.pad { per * n - records } else { 0 };
    // First position of part r in the shuffled order (without padding: near-equal slices).
    let part_start = |r: usize| if opts.pad { r * per } else { r * records / n };
    let finals: Vec<PathBuf> = (0..n).map(|r| out_dir.join(part_name(r))).collect();
    let mut outs = AtomicFiles::create(finals, 256 << 10)?;
    let mut part_lines = vec![0usize; n];
    let mut head: Vec<Vec<u8>> = Vec::with_capacity(padded);
    let mut pos = 0usize;
    let mut part = 0usize;
    let mut written = 0u64;
    let mut data = Vec::new();
    for p in &bucket_paths {
        data.clear();
        std::fs::File::open(p)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(io_err(p))?;
        // (key, start of the line, end of the line including its `\n`)
        let mut lines: Vec<(u64, usize, usize)> = Vec::new();
        let mut at = 0usize;
        while at < data.len() {
            let bad = || DataError::InvalidArgument(format!("{}: corrupt bucket file", p.display()));
            let key = u64::from_le_bytes(data.get(at..at + 8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
            let start = at + 8;
            let end = start + data[start..].iter().position(|&c| c == b'\n').ok_or_else(bad)? + 1;
            lines.push((key, start, end));
            at = end;
        }
        lines.sort_by_key(|&(key, start, _)| (key, start));
        for &(_, start, end) in &lines {
            let text = &data[start..end];
            while part + 1 < n && pos >= part_start(part + 1) {
                part += 1;
            }
            outs.write(part, text)?;
            part_lines[part] += 1;
            if head.len() < padded {
                head.push(text.to_vec());
            }
            pos += 1;
            written += (end - start) as u64;
        }
        progress(2, written, total);
        let _ = std::fs::remove_file(p);
    }
    for text in &head {
        while part + 1 < n && pos >= part_start(part + 1) {
            part += 1;
        }
        outs.write(part, text)?;
        part_lines[part] += 1;
        pos += 1;
    }
    let files = outs.commit()?;
    crate::shards::write_file_list(out_dir, &files)?;
    crate::shards::remove_stale_parts(out_dir, n)?;
    drop(tmp);
    Ok(ShuffleSummary {
        files,
        records,
        padded,
        part_lines,
        buckets: k,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shards::FILE_LIST;
    use crate::testutil::TempDir;

    fn lines_of(dir: &Path) -> Vec<Vec<String>> {
        let list = std::fs::read_to_string(dir.join(FILE_LIST)).unwrap();
        list.lines()
            .map(|name| {
                std::fs::read_to_string(dir.join(name))
                    .unwrap()
                    .lines()
                    .map(String::from)
                    .collect()
            })
            .collect()
    }

    fn write_input(dir: &Path, name: &str, lines: &[String], end: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, lines.join(end)).unwrap();
        p
    }

    #[test]
    fn output_is_a_seeded_permutation_independent_of_the_memory_budget() {
        let dir = TempDir::new("shuffle");
        let all: Vec<String> = (0..1000).map(|i| format!("img{i:04}AAAA\t{}", i % 37)).collect();
        let a = write_input(dir.path(), "a", &all[..600], "\n");
        // CRLF and no final newline in the second input.
        let b = write_input(dir.path(), "b", &all[600..], "\r\n");
        let run = |out: &str, memory_bytes: u64, seed: u64, parts: usize| {
            let opts = ShuffleOptions {
                seed,
                parts,
                memory_bytes,
                pad: false,
                ..ShuffleOptions::default()
            };
            let out = dir.path().join(out);
            let s = shuffle_split(&[a.clone(), b.clone()], &out, &opts, |_, _, _| {}).unwrap();
            (s, lines_of(&out))
        };
        let (s1, one) = run("o1", 1 << 30, 7, 3);
        assert_eq!(s1.buckets, 1);
        assert_eq!((s1.records, s1.padded), (1000, 0));
        assert_eq!(s1.part_lines, vec![333, 333, 334]);
        let (s2, many) = run("o2", 2000, 7, 3);
        assert!(s2.buckets > 10, "{}", s2.buckets);
        assert_eq!(one, many, "the permutation does not depend on the bucket count");
        let flat: Vec<String> = one.concat();
        let mut sorted = flat.clone();
        sorted.sort();
        let mut want = all.clone();
        want.sort();
        assert_eq!(sorted, want, "a permutation of the input");
        assert_ne!(flat, all, "shuffled");
        let (_, other) = run("o3", 1 << 30, 8, 3);
        assert_ne!(other.concat(), flat, "another seed, another order");
        // Inputs untouched; no temporary files left.
        assert_eq!(std::fs::read_to_string(&a).unwrap(), all[..600].join("\n"));
        let names: Vec<String> = std::fs::read_dir(dir.path().join("o2"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 4, "{names:?}");
    }

    #[test]
    fn uniform_positions() {
        // Where line 0 lands over many seeds: roughly uniform over the 8 positions.
        let dir = TempDir::new("shuffle-uniform");
        let lines: Vec<String> = (0..8).map(|i| format!("x{i}\t{i}")).collect();
        let input = write_input(dir.path(), "in", &lines, "\n");
        let mut hits = [0usize; 8];
        for seed in 0..400 {
            let opts = ShuffleOptions {
                seed,
                memory_bytes: 40, // several buckets
                ..ShuffleOptions::default()
            };
            let out = dir.path().join("out");
            shuffle_split(std::slice::from_ref(&input), &out, &opts, |_, _, _| {}).unwrap();
            let got = &lines_of(&out)[0];
            hits[got.iter().position(|l| l == "x0\t0").unwrap()] += 1;
        }
        assert!(hits.iter().all(|&h| (25..=75).contains(&h)), "{hits:?}");
    }

    #[test]
    fn pads_like_plsc_and_reads_label_first() {
        let dir = TempDir::new("shuffle-pad");
        let lines: Vec<String> = (0..10).map(|i| format!("{i}\tIMG{i}")).collect();
        let input = write_input(dir.path(), "in", &lines, "\n");
        let opts = ShuffleOptions {
            seed: 3,
            parts: 4,
            label_first: true,
            ..ShuffleOptions::default()
        };
        let out = dir.path().join("out");
        let s = shuffle_split(std::slice::from_ref(&input), &out, &opts, |_, _, _| {}).unwrap();
        assert_eq!((s.records, s.padded, s.part_lines.clone()), (10, 2, vec![3, 3, 3, 3]));
        let flat = lines_of(&out).concat();
        // Standard order out; the two padding lines repeat the head of the shuffled order.
        assert!(flat.iter().all(|l| l.starts_with("IMG")), "{flat:?}");
        assert_eq!(&flat[10..], &flat[..2]);
        let mut head: Vec<_> = flat[..10].to_vec();
        head.sort();
        let mut want: Vec<String> = (0..10).map(|i| format!("IMG{i}\t{i}")).collect();
        want.sort();
        assert_eq!(head, want);
        let ds = crate::Base64Shards::open(&out).unwrap();
        assert_eq!(ds.files().len(), 4);
    }

    #[test]
    fn bad_lines_and_unsafe_outputs_are_errors_and_leave_nothing() {
        let dir = TempDir::new("shuffle-bad");
        let input = write_input(dir.path(), "in", &["a\t1".into(), "b\tx".into(), "c\t2".into()], "\n");
        let out = dir.path().join("out");
        let opts = ShuffleOptions {
            parts: 2,
            ..ShuffleOptions::default()
        };
        let e = shuffle_split(std::slice::from_ref(&input), &out, &opts, |_, _, _| {}).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!("{}:2: label `x`", input.display())),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "nothing left behind");
        let skip = ShuffleOptions {
            skip_bad: true,
            num_classes: Some(2),
            ..opts.clone()
        };
        // One good line left cannot fill two parts.
        let e = shuffle_split(std::slice::from_ref(&input), &out, &skip, |_, _, _| {}).unwrap_err();
        assert!(e.to_string().contains("--parts 2 is more than the 1 good line"), "{e}");
        let skip = ShuffleOptions { parts: 1, ..skip };
        let s = shuffle_split(std::slice::from_ref(&input), &out, &skip, |_, _, _| {}).unwrap();
        assert_eq!((s.records, s.skipped.count), (1, 2));
        // An input inside the output directory is refused (stale parts could delete it).
        let inside = write_input(&out, "part-00007", &["z\t1".into()], "\n");
        let e = shuffle_split(std::slice::from_ref(&inside), &out, &opts, |_, _, _| {}).unwrap_err();
        assert!(e.to_string().contains("is in the output directory"), "{e}");
        assert!(inside.exists());
        let empty = write_input(dir.path(), "empty", &[], "\n");
        let e = shuffle_split(&[empty], &dir.path().join("o2"), &opts, |_, _, _| {}).unwrap_err();
        assert!(e.to_string().contains("empty file"), "{e}");
    }
}
