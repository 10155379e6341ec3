//! `lsc data`: dataset tools. `pack` converts datasets to PLSC base64 shards, `verify` checks
//! every record, `stats` summarises classes and image sizes, `shuffle-split` globally shuffles
//! shards into per-rank files in bounded memory, `make-bin` writes a face verification `.bin`.

use anyhow::{Context, Result, anyhow, bail};
use lexopt::prelude::*;
use lsc_data::{DataError, DatasetFormat, ReadOptions, VerifyOptions, VerifyReport};
use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const USAGE: &str = "\
lsc data COMMAND
  pack --format FORMAT --src PATH --out DIR [--shards N] [--skip-bad] [--num-classes N] [--decode]
        convert a dataset (folder, list, rec, shards, fashion-mnist) to PLSC base64 shards
  verify [--num-classes N] [--size HxW] [--format FORMAT] [--skip-bad] PATH...
        decode every record; report each bad record as `file:line: reason`
  stats [--num-classes N] [--format FORMAT] [--skip-bad] PATH...
        images per class, image sizes, class-frequency summary
  shuffle-split --seed S --parts N --out DIR [--label-first] [--memory-mb M] [--no-pad]
                [--skip-bad] [--num-classes N] INPUT...
        globally shuffle base64 shards into N per-rank shards, in bounded memory
  make-bin --pairs LIST --root DIR --out FILE.bin
        write a face verification set (.bin pickle) from a PLSC pair list
Run `lsc data COMMAND --help` for a command's flags.
";

const PACK_USAGE: &str = "\
lsc data pack --format FORMAT --src PATH --out DIR [--shards N] [--skip-bad] [--num-classes N] [--decode]
  --format FORMAT        folder         an image folder: one subfolder per class (sorted names are labels 0, 1, ...)
                         list           a PLSC label.txt (`<relative path> <label>` lines) or its directory
                         rec            an insightface / MXNet RecordIO file NAME.rec (with NAME.idx)
                         shards         PLSC base64 shards (file_list.txt, its directory, or one shard)
                         fashion-mnist  Fashion-MNIST IDX files {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz;
                                        writes DIR/train and DIR/test
  --src PATH             the input [fashion-mnist default: /usr/share/datasets/fashion-mnist]
  --out DIR              output directory: DIR/part-NNNNN + DIR/file_list.txt (+ classes.txt for folders)
  --shards N             shard files, filled round robin [default: 1]
  --skip-bad             leave bad records out with a counted warning instead of failing
  --num-classes N        labels must be below N
  --decode               decode every image fully before packing it (default: check its headers)
  fashion-mnist only:
  --per-class TRAIN,TEST keep the first TRAIN training / TEST test images of each class [default: all]
  --quality Q            JPEG quality 1..=100 [default: 95]
";

const VERIFY_USAGE: &str = "\
lsc data verify [--num-classes N] [--size HxW] [--format FORMAT] [--skip-bad] PATH...
  PATH             a shard set (directory with file_list.txt, a file_list.txt, or one shard file),
                   a NAME.rec, or a label.txt; --format folder|list|rec|shards overrides the guess
  --num-classes N  labels must be below N
  --size HxW       every image must be H x W (e.g. 112x112)
  --skip-bad       report bad records but exit 0 (a counted warning)
  Reads and decodes every record; prints each bad one as `file:line: reason` to stderr, then per
  PATH the counts, label range and image sizes. Fails if any record is bad.
";

const STATS_USAGE: &str = "\
lsc data stats [--num-classes N] [--format FORMAT] [--skip-bad] PATH...
  Per PATH: records, images per class (`label: count`), distinct image sizes HxW with counts,
  and the class-frequency summary (classes, min / median / max images per class). Image sizes
  come from the headers (no full decode). Bad records are reported as in `verify`; the command
  fails on any unless --skip-bad.
";

const SHUFFLE_USAGE: &str = "\
lsc data shuffle-split --seed S --parts N --out DIR [options] INPUT...
  INPUT            base64 shard files (or file_list.txt files or shard-set directories)
  --seed S         the shuffle seed (the same seed gives the same output)
  --parts N        output shards DIR/part-00000 .. part-(N-1), one per rank, + DIR/file_list.txt
  --out DIR        output directory (must not hold any input)
  --label-first    input lines are `label<TAB>base64` (PLSC's process_base64_files.py input);
                   output lines are always `base64<TAB>label`
  --memory-mb M    memory budget in MiB [default: 1024]; larger inputs go through temporary
                   bucket files in DIR
  --no-pad         parts of near-equal size; by default every part has ceil(lines / N) lines,
                   padded by repeating the head of the shuffled order (PLSC's rule)
  --skip-bad       leave bad lines out with a counted warning instead of failing
  --num-classes N  labels must be below N
  Inputs are never modified or deleted; outputs appear only when complete.
";

const MAKE_BIN_USAGE: &str = "\
lsc data make-bin --pairs LIST --root DIR --out FILE.bin
  --pairs LIST   PLSC 2 pair list: `img1<TAB>img2<TAB>issame` lines (issame 0 or 1)
  --root DIR     the directory the image paths are relative to
  --out FILE     the .bin to write: a pickle (protocol 3) of ([image bytes...], [bool...]),
                 pair i = images 2i and 2i+1, as insightface's and PLSC's loaders read it
";

/// Runs `lsc data ARGS...` (`args` excludes the program name and `data`).
pub fn run(args: Vec<OsString>) -> Result<()> {
    let mut parser = lexopt::Parser::from_args(args);
    match parser.next()? {
        Some(Value(cmd)) => match cmd.to_str() {
            Some("pack") => pack(parser),
            Some("verify") => verify(parser, false),
            Some("stats") => verify(parser, true),
            Some("shuffle-split") => shuffle_split(parser),
            Some("make-bin") => make_bin(parser),
            Some("help") => {
                print!("{USAGE}");
                Ok(())
            }
            _ => bail!("unknown `lsc data` command {cmd:?}\n\n{USAGE}"),
        },
        Some(Long("help") | Short('h')) => {
            print!("{USAGE}");
            Ok(())
        }
        Some(arg) => Err(anyhow!("{}\n\n{USAGE}", arg.unexpected())),
        None => bail!("missing `lsc data` command\n\n{USAGE}"),
    }
}

/// The value of option `--flag`, parsed, with errors naming the flag.
fn flag_value<T>(parser: &mut lexopt::Parser, flag: &str, usage: &str) -> Result<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let raw = parser.value().map_err(|e| anyhow!("--{flag}: {e}\n\n{usage}"))?;
    let text = raw
        .to_str()
        .ok_or_else(|| anyhow!("--{flag}: {raw:?} is not valid UTF-8"))?;
    text.parse::<T>()
        .map_err(|e| anyhow!("--{flag} {text:?}: {e}\n\n{usage}"))
}

/// Parses `TRAIN,TEST` (two non-negative integers).
fn parse_per_class(text: &str) -> Result<(usize, usize)> {
    let (a, b) = text
        .split_once(',')
        .ok_or_else(|| anyhow!("--per-class {text:?}: expected TRAIN,TEST, e.g. 600,100"))?;
    let parse = |s: &str| {
        s.trim()
            .parse::<usize>()
            .map_err(|e| anyhow!("--per-class {text:?}: {s:?}: {e}"))
    };
    let (tr, te) = (parse(a)?, parse(b)?);
    if tr == 0 || te == 0 {
        bail!("--per-class {text:?}: both counts must be positive");
    }
    Ok((tr, te))
}

/// Parses `HxW`.
fn parse_size(text: &str) -> Result<(usize, usize)> {
    let (h, w) = text
        .split_once(['x', 'X'])
        .ok_or_else(|| anyhow!("--size {text:?}: expected HxW, e.g. 112x112"))?;
    match (h.trim().parse::<usize>(), w.trim().parse::<usize>()) {
        (Ok(h), Ok(w)) if h > 0 && w > 0 => Ok((h, w)),
        _ => bail!("--size {text:?}: expected two positive integers HxW"),
    }
}

fn parse_format(text: &str, usage: &str) -> Result<DatasetFormat> {
    DatasetFormat::from_name(text)
        .ok_or_else(|| anyhow!("--format {text:?}: unsupported (supported: folder, list, rec, shards)\n\n{usage}"))
}

fn positive_classes(n: usize) -> Result<Option<usize>> {
    if n == 0 {
        bail!("--num-classes must be positive");
    }
    Ok(Some(n))
}

/// A progress line on stderr: redrawn at most 4 times a second when stderr is a terminal,
/// otherwise one line every 30 seconds (so short runs, tests and pipes stay quiet).
struct Progress {
    label: String,
    tty: bool,
    start: Instant,
    last: Instant,
    drawn: bool,
}

impl Progress {
    fn new(label: impl Into<String>) -> Progress {
        let now = Instant::now();
        Progress {
            label: label.into(),
            tty: std::io::stderr().is_terminal(),
            start: now,
            last: now,
            drawn: false,
        }
    }

    fn update(&mut self, done: u64, total: u64, unit: &str) {
        let every = if self.tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(30)
        };
        if self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let pct = if total == 0 {
            100.0
        } else {
            100.0 * done as f64 / total as f64
        };
        let line = format!(
            "{}: {done}/{total} {unit} ({pct:.1}%, {:.0} s)",
            self.label,
            self.start.elapsed().as_secs_f64()
        );
        if self.tty {
            eprint!("\r{line}\x1b[K");
            self.drawn = true;
        } else {
            eprintln!("{line}");
        }
    }

    fn finish(&mut self) {
        if self.drawn {
            eprint!("\r\x1b[K");
            self.drawn = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Runs a tool that writes into `--out`: when it fails and `--out` did not exist before, the
/// directory it made is removed again if it is empty, so a failed run leaves nothing behind.
fn leaving_nothing(
    run: impl FnOnce(lexopt::Parser, &mut Option<(PathBuf, bool)>) -> Result<()>,
    parser: lexopt::Parser,
) -> Result<()> {
    let mut out = None;
    let r = run(parser, &mut out);
    if r.is_err()
        && let Some((dir, false)) = out
    {
        let _ = std::fs::remove_dir(dir);
    }
    r
}

fn pack(parser: lexopt::Parser) -> Result<()> {
    leaving_nothing(pack_into, parser)
}

fn pack_into(mut parser: lexopt::Parser, seen: &mut Option<(PathBuf, bool)>) -> Result<()> {
    let mut format: Option<String> = None;
    let mut src: Option<PathBuf> = None;
    let mut out: Option<PathBuf> = None;
    let mut per_class = None;
    let mut shards = 1usize;
    let mut quality = 95u8;
    let mut opts = lsc_data::pack::PackOptions::default();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("format") => format = Some(flag_value(&mut parser, "format", PACK_USAGE)?),
            Long("src") => src = Some(flag_value(&mut parser, "src", PACK_USAGE)?),
            Long("out") => out = Some(flag_value(&mut parser, "out", PACK_USAGE)?),
            Long("per-class") => {
                let text: String = flag_value(&mut parser, "per-class", PACK_USAGE)?;
                per_class = Some(parse_per_class(&text)?);
            }
            Long("shards") => shards = flag_value(&mut parser, "shards", PACK_USAGE)?,
            Long("quality") => quality = flag_value(&mut parser, "quality", PACK_USAGE)?,
            Long("skip-bad") => opts.skip_bad = true,
            Long("decode") => opts.decode = true,
            Long("num-classes") => {
                opts.num_classes = positive_classes(flag_value(&mut parser, "num-classes", PACK_USAGE)?)?
            }
            Long("help") | Short('h') => {
                print!("{PACK_USAGE}");
                return Ok(());
            }
            other => bail!("{}\n\n{PACK_USAGE}", other.unexpected()),
        }
    }
    let format = format.ok_or_else(|| anyhow!("missing --format\n\n{PACK_USAGE}"))?;
    let out = out.ok_or_else(|| anyhow!("missing --out\n\n{PACK_USAGE}"))?;
    *seen = Some((out.clone(), out.exists()));
    if format == "fashion-mnist" {
        let src = src.unwrap_or_else(|| PathBuf::from(lsc_data::pack::DEBIAN_FASHION_MNIST));
        let summary = lsc_data::pack::fashion_mnist(&src, &out, per_class, shards, quality)
            .with_context(|| format!("packing {} into {}", src.display(), out.display()))?;
        for s in [&summary.train, &summary.test] {
            print_summary(s);
        }
        return Ok(());
    }
    let format = DatasetFormat::from_name(&format).ok_or_else(|| {
        anyhow!(
            "--format {format:?}: unsupported (supported: folder, list, rec, shards, fashion-mnist)\n\n{PACK_USAGE}"
        )
    })?;
    let src = src.ok_or_else(|| anyhow!("missing --src\n\n{PACK_USAGE}"))?;
    let read = ReadOptions {
        skip_bad: opts.skip_bad,
        num_classes: opts.num_classes,
    };
    let opened = lsc_data::open_dataset(&src, Some(format), &read)
        .with_context(|| format!("opening {} as {}", src.display(), format.name()))?;
    let mut progress = Progress::new(format!("packing {}", src.display()));
    let (summary, skipped) = lsc_data::pack::pack_dataset(
        opened.dataset.as_ref(),
        &out,
        shards,
        opened.class_names.as_deref(),
        &opts,
        |done, total| progress.update(done as u64, total as u64, "records"),
    )
    .with_context(|| format!("packing {} into {}", src.display(), out.display()))?;
    progress.finish();
    report_skipped(
        opened.skipped.count + skipped.count,
        opened.skipped.first.iter().chain(&skipped.first),
    );
    print_summary(&summary);
    Ok(())
}

fn print_summary(s: &lsc_data::ShardSummary) {
    println!(
        "{}: {} records, {} shard(s), {} bytes, {} labels",
        s.dir.display(),
        s.records,
        s.files.len(),
        s.bytes,
        s.label_counts.len()
    );
}

/// Prints the kept skip-bad errors and the counted warning.
fn report_skipped<'a>(count: usize, errors: impl Iterator<Item = &'a DataError>) {
    if count == 0 {
        return;
    }
    let mut shown = 0;
    for e in errors {
        eprintln!("{e}");
        shown += 1;
    }
    let more = if count > shown {
        format!(" ({} not shown)", count - shown)
    } else {
        String::new()
    };
    eprintln!("warning: {count} bad record(s) skipped{more}");
}

fn verify(mut parser: lexopt::Parser, stats: bool) -> Result<()> {
    let usage = if stats { STATS_USAGE } else { VERIFY_USAGE };
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut format = None;
    let mut skip_bad = false;
    let mut opts = VerifyOptions {
        decode: !stats,
        ..VerifyOptions::default()
    };
    while let Some(arg) = parser.next()? {
        match arg {
            Value(v) => paths.push(v.into()),
            Long("num-classes") => opts.num_classes = positive_classes(flag_value(&mut parser, "num-classes", usage)?)?,
            Long("size") if !stats => {
                let text: String = flag_value(&mut parser, "size", usage)?;
                opts.size = Some(parse_size(&text)?);
            }
            Long("format") => {
                let text: String = flag_value(&mut parser, "format", usage)?;
                format = Some(parse_format(&text, usage)?);
            }
            Long("skip-bad") => skip_bad = true,
            Long("help") | Short('h') => {
                print!("{usage}");
                return Ok(());
            }
            other => bail!("{}\n\n{usage}", other.unexpected()),
        }
    }
    if paths.is_empty() {
        bail!("missing PATH\n\n{usage}");
    }
    let read = ReadOptions {
        skip_bad: true, // report every bad line, not only the first
        num_classes: opts.num_classes,
    };
    let (mut bad, mut failed) = (0usize, Vec::new());
    for path in &paths {
        let opened = match lsc_data::open_dataset(path, format, &read) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("{e}");
                failed.push(path.display().to_string());
                continue;
            }
        };
        for e in &opened.skipped.first {
            eprintln!("{e}");
        }
        if opened.skipped.count > opened.skipped.first.len() {
            eprintln!(
                "{}: {} more bad line(s) not shown",
                path.display(),
                opened.skipped.count - opened.skipped.first.len()
            );
        }
        let mut progress = Progress::new(format!("{} {}", if stats { "stats" } else { "verify" }, path.display()));
        let report = lsc_data::verify_dataset(
            opened.dataset.as_ref(),
            &opts,
            |e| eprintln!("{e}"),
            |done, total| progress.update(done as u64, total as u64, "records"),
        );
        progress.finish();
        let path_bad = report.bad + opened.skipped.count;
        bad += path_bad;
        if stats {
            print_stats(path, &report, path_bad);
        } else {
            print_verify(path, &report, path_bad);
        }
    }
    if !failed.is_empty() {
        bail!("could not read {}", failed.join(", "));
    }
    if bad > 0 {
        if skip_bad {
            eprintln!("warning: {bad} bad record(s) skipped");
        } else {
            bail!("{bad} bad record(s)");
        }
    }
    Ok(())
}

fn sizes_text(report: &VerifyReport) -> String {
    if report.sizes.is_empty() {
        return "none".to_string();
    }
    let sizes: Vec<String> = report.sizes.iter().map(|((h, w), n)| format!("{h}x{w}: {n}")).collect();
    sizes.join(", ")
}

fn print_verify(path: &Path, report: &VerifyReport, bad: usize) {
    let labels = match (
        report.label_counts.keys().next(),
        report.label_counts.keys().next_back(),
    ) {
        (Some(lo), Some(hi)) => format!("labels {lo}..={hi} ({} distinct)", report.label_counts.len()),
        _ => "no labels".to_string(),
    };
    println!(
        "{}: {} records, {bad} bad; {labels}; sizes (HxW) {}",
        path.display(),
        report.records + bad - report.bad,
        sizes_text(report)
    );
    if report.label_counts.len() <= 32 && !report.label_counts.is_empty() {
        let per: Vec<String> = report.label_counts.iter().map(|(l, n)| format!("{l}:{n}")).collect();
        println!("  per label: {}", per.join(" "));
    }
}

fn print_stats(path: &Path, report: &VerifyReport, bad: usize) {
    let good = report.records - report.bad;
    println!("{}: {} records, {good} good, {bad} bad", path.display(), good + bad);
    match report.class_summary() {
        Some(c) => println!(
            "  classes: {}; images per class: min {}, median {}, max {}",
            c.classes, c.min, c.median, c.max
        ),
        None => println!("  classes: 0"),
    }
    println!("  sizes (HxW): {}", sizes_text(report));
    println!("  images per class (label: count):");
    for (label, n) in &report.label_counts {
        println!("    {label}: {n}");
    }
}

fn shuffle_split(parser: lexopt::Parser) -> Result<()> {
    leaving_nothing(shuffle_split_into, parser)
}

fn shuffle_split_into(mut parser: lexopt::Parser, seen: &mut Option<(PathBuf, bool)>) -> Result<()> {
    let usage = SHUFFLE_USAGE;
    let mut inputs: Vec<PathBuf> = Vec::new();
    let mut seed: Option<u64> = None;
    let mut parts: Option<usize> = None;
    let mut out: Option<PathBuf> = None;
    let mut opts = lsc_data::shuffle::ShuffleOptions::default();
    while let Some(arg) = parser.next()? {
        match arg {
            Value(v) => inputs.push(v.into()),
            Long("seed") => seed = Some(flag_value(&mut parser, "seed", usage)?),
            Long("parts") => parts = Some(flag_value(&mut parser, "parts", usage)?),
            Long("out") => out = Some(flag_value(&mut parser, "out", usage)?),
            Long("label-first") => opts.label_first = true,
            Long("no-pad") => opts.pad = false,
            Long("skip-bad") => opts.skip_bad = true,
            Long("num-classes") => opts.num_classes = positive_classes(flag_value(&mut parser, "num-classes", usage)?)?,
            Long("memory-mb") => {
                let mb: u64 = flag_value(&mut parser, "memory-mb", usage)?;
                if mb == 0 {
                    bail!("--memory-mb must be positive");
                }
                opts.memory_bytes = mb << 20;
            }
            Long("help") | Short('h') => {
                print!("{usage}");
                return Ok(());
            }
            other => bail!("{}\n\n{usage}", other.unexpected()),
        }
    }
    opts.seed = seed.ok_or_else(|| anyhow!("missing --seed\n\n{usage}"))?;
    opts.parts = parts.ok_or_else(|| anyhow!("missing --parts\n\n{usage}"))?;
    let out = out.ok_or_else(|| anyhow!("missing --out\n\n{usage}"))?;
    *seen = Some((out.clone(), out.exists()));
    if inputs.is_empty() {
        bail!("missing INPUT\n\n{usage}");
    }
    let mut progress = Progress::new("shuffle-split");
    let summary = lsc_data::shuffle::shuffle_split(&inputs, &out, &opts, |pass, done, total| {
        progress.label = format!("shuffle-split pass {pass}/2");
        progress.update(done, total, "bytes");
    })
    .with_context(|| format!("shuffling into {}", out.display()))?;
    progress.finish();
    report_skipped(summary.skipped.count, summary.skipped.first.iter());
    println!(
        "{}: {} records shuffled into {} part(s) of {} line(s){}; {} bucket(s)",
        out.display(),
        summary.records,
        summary.files.len(),
        summary
            .part_lines
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join("/"),
        if summary.padded > 0 {
            format!(" ({} repeated to pad)", summary.padded)
        } else {
            String::new()
        },
        summary.buckets
    );
    Ok(())
}

fn make_bin(mut parser: lexopt::Parser) -> Result<()> {
    let usage = MAKE_BIN_USAGE;
    let (mut pairs, mut root, mut out): (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>) = (None, None, None);
    while let Some(arg) = parser.next()? {
        match arg {
            Long("pairs") => pairs = Some(flag_value(&mut parser, "pairs", usage)?),
            Long("root") => root = Some(flag_value(&mut parser, "root", usage)?),
            Long("out") => out = Some(flag_value(&mut parser, "out", usage)?),
            Long("help") | Short('h') => {
                print!("{usage}");
                return Ok(());
            }
            other => bail!("{}\n\n{usage}", other.unexpected()),
        }
    }
    let pairs = pairs.ok_or_else(|| anyhow!("missing --pairs\n\n{usage}"))?;
    let root = root.ok_or_else(|| anyhow!("missing --root\n\n{usage}"))?;
    let out = out.ok_or_else(|| anyhow!("missing --out\n\n{usage}"))?;
    let set = lsc_data::bin::read_pair_list(&pairs, &root)?;
    lsc_data::bin::write_bin(&set, &out)?;
    println!(
        "{}: {} pairs ({} same, {} different), {} images",
        out.display(),
        set.pairs(),
        set.issame.iter().filter(|&&s| s).count(),
        set.issame.iter().filter(|&&s| !s).count(),
        set.images.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lsc-cli-data-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn usage_and_bad_flags() {
        run(args(&["--help"])).unwrap();
        for cmd in ["pack", "verify", "stats", "shuffle-split", "make-bin"] {
            run(args(&[cmd, "--help"])).unwrap();
        }
        let e = run(args(&["pack", "--format", "fashion-mnist", "--bogus"])).unwrap_err();
        assert!(e.to_string().contains("--bogus"), "{e}");
        let e = run(args(&["pack", "--shards", "x"])).unwrap_err();
        assert!(e.to_string().starts_with("--shards \"x\""), "{e}");
        let e = run(args(&["pack", "--per-class", "600"])).unwrap_err();
        assert!(e.to_string().contains("expected TRAIN,TEST"), "{e}");
        let e = run(args(&["pack", "--format", "mnist", "--out", "/tmp/x"])).unwrap_err();
        assert!(e.to_string().contains("unsupported"), "{e}");
        let e = run(args(&["pack", "--format", "folder", "--out", "/tmp/x"])).unwrap_err();
        assert!(e.to_string().contains("missing --src"), "{e}");
        let e = run(args(&["frobnicate"])).unwrap_err();
        assert!(e.to_string().contains("frobnicate"), "{e}");
        assert!(run(args(&["verify"])).is_err());
        let e = run(args(&["verify", "--size", "112", "x"])).unwrap_err();
        assert!(e.to_string().contains("expected HxW"), "{e}");
        let e = run(args(&["shuffle-split", "--parts", "2", "--out", "/tmp/x", "a"])).unwrap_err();
        assert!(e.to_string().contains("missing --seed"), "{e}");
        let e = run(args(&["verify", "--num-classes", "0", "x"])).unwrap_err();
        assert!(e.to_string().contains("must be positive"), "{e}");
        assert_eq!(parse_per_class("600,100").unwrap(), (600, 100));
        assert_eq!(parse_size("112x96").unwrap(), (112, 96));
    }

    #[test]
    fn verify_passes_good_and_fails_bad_sets() {
        let dir = temp_dir("verify");
        let jpeg = lsc_data::pack::encode_grey_jpeg(&[128; 16], 4, 4, 95).unwrap();
        let good = dir.join("good");
        lsc_data::write_shards(vec![(jpeg.clone(), 3), (jpeg, 4)].into_iter(), &good, 1).unwrap();
        run(vec!["verify".into(), good.clone().into()]).unwrap();
        run(vec!["stats".into(), good.clone().into()]).unwrap();
        let e = run(vec![
            "verify".into(),
            "--num-classes".into(),
            "4".into(),
            good.clone().into(),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("1 bad record"), "{e}");
        let e = run(vec![
            "verify".into(),
            "--size".into(),
            "5x4".into(),
            good.clone().into(),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("2 bad record"), "{e}");
        let bad = dir.join("bad");
        std::fs::write(&bad, "AAAA\t1\nnot a record\n").unwrap();
        let e = run(vec!["verify".into(), good.clone().into(), bad.clone().into()]).unwrap_err();
        assert!(e.to_string().contains("2 bad record"), "{e}");
        run(vec!["verify".into(), "--skip-bad".into(), bad.into()]).unwrap();
        let e = run(vec!["verify".into(), dir.join("absent").into()]).unwrap_err();
        assert!(e.to_string().contains("could not read"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
