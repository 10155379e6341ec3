//! `lsc data`: pack datasets into PLSC base64 shards (`lsc data pack`) and check shard sets
//! record by record (`lsc data verify`).

use anyhow::{Context, Result, anyhow, bail};
use lexopt::prelude::*;
use std::ffi::OsString;
use std::path::PathBuf;

const USAGE: &str = "\
lsc data COMMAND
  pack --format fashion-mnist --out DIR [--src DIR] [--per-class TRAIN,TEST] [--shards N] [--quality Q]
        convert a dataset to PLSC base64 shards DIR/{train,test}/part-NNNNN + file_list.txt
  verify PATH...
        decode every record of each shard set (a directory with file_list.txt, a file_list.txt,
        or one shard file); report each bad record as `file:line: reason`
";

const PACK_USAGE: &str = "\
lsc data pack --format fashion-mnist --out DIR [--src DIR] [--per-class TRAIN,TEST] [--shards N] [--quality Q]
  --format FORMAT        input format; `fashion-mnist` (IDX files {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz)
  --src DIR              input directory [default: /usr/share/datasets/fashion-mnist, Debian's dataset-fashion-mnist]
  --out DIR              output directory; writes DIR/train and DIR/test
  --per-class TRAIN,TEST keep the first TRAIN training / TEST test images of each class, in original order
                         [default: everything]
  --shards N             shard files per split, filled round robin [default: 1]
  --quality Q            JPEG quality 1..=100 [default: 95]
";

const VERIFY_USAGE: &str = "\
lsc data verify PATH...
  PATH   a shard-set directory (with file_list.txt), a file_list.txt, or a single shard file.
  Decodes every record (base64 and JPEG); prints each bad record as `file:line: reason` to stderr,
  then counts, the label range and image sizes per PATH. Fails if any record is bad.
";

/// Runs `lsc data ARGS...` (`args` excludes the program name and `data`).
pub fn run(args: Vec<OsString>) -> Result<()> {
    let mut parser = lexopt::Parser::from_args(args);
    match parser.next()? {
        Some(Value(cmd)) => match cmd.to_str() {
            Some("pack") => pack(parser),
            Some("verify") => verify(parser),
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

fn pack(mut parser: lexopt::Parser) -> Result<()> {
    let mut format: Option<String> = None;
    let mut src = PathBuf::from(lsc_data::pack::DEBIAN_FASHION_MNIST);
    let mut out: Option<PathBuf> = None;
    let mut per_class = None;
    let mut shards = 1usize;
    let mut quality = 95u8;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("format") => format = Some(flag_value(&mut parser, "format", PACK_USAGE)?),
            Long("src") => src = flag_value(&mut parser, "src", PACK_USAGE)?,
            Long("out") => out = Some(flag_value(&mut parser, "out", PACK_USAGE)?),
            Long("per-class") => {
                let text: String = flag_value(&mut parser, "per-class", PACK_USAGE)?;
                per_class = Some(parse_per_class(&text)?);
            }
            Long("shards") => shards = flag_value(&mut parser, "shards", PACK_USAGE)?,
            Long("quality") => quality = flag_value(&mut parser, "quality", PACK_USAGE)?,
            Long("help") | Short('h') => {
                print!("{PACK_USAGE}");
                return Ok(());
            }
            other => bail!("{}\n\n{PACK_USAGE}", other.unexpected()),
        }
    }
    let format = format.ok_or_else(|| anyhow!("missing --format\n\n{PACK_USAGE}"))?;
    let out = out.ok_or_else(|| anyhow!("missing --out\n\n{PACK_USAGE}"))?;
    if format != "fashion-mnist" {
        bail!("--format {format:?}: unsupported (supported: fashion-mnist)\n\n{PACK_USAGE}");
    }
    let summary = lsc_data::pack::fashion_mnist(&src, &out, per_class, shards, quality)
        .with_context(|| format!("packing {} into {}", src.display(), out.display()))?;
    for s in [&summary.train, &summary.test] {
        println!(
            "{}: {} records, {} shard(s), {} bytes, {} labels",
            s.dir.display(),
            s.records,
            s.files.len(),
            s.bytes,
            s.label_counts.len()
        );
    }
    Ok(())
}

fn verify(mut parser: lexopt::Parser) -> Result<()> {
    let mut paths: Vec<PathBuf> = Vec::new();
    while let Some(arg) = parser.next()? {
        match arg {
            Value(v) => paths.push(v.into()),
            Long("help") | Short('h') => {
                print!("{VERIFY_USAGE}");
                return Ok(());
            }
            other => bail!("{}\n\n{VERIFY_USAGE}", other.unexpected()),
        }
    }
    if paths.is_empty() {
        bail!("missing PATH\n\n{VERIFY_USAGE}");
    }
    let (mut bad, mut failed) = (0usize, Vec::new());
    for path in &paths {
        let report = match lsc_data::verify(path, |e| eprintln!("{e}")) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{e}");
                failed.push(path.display().to_string());
                continue;
            }
        };
        bad += report.bad;
        let labels = match (
            report.label_counts.keys().next(),
            report.label_counts.keys().next_back(),
        ) {
            (Some(lo), Some(hi)) => format!("labels {lo}..={hi} ({} distinct)", report.label_counts.len()),
            _ => "no labels".to_string(),
        };
        let sizes: Vec<String> = report.sizes.iter().map(|((h, w), n)| format!("{h}x{w}: {n}")).collect();
        println!(
            "{}: {} shard file(s), {} records, {} bad; {labels}; sizes (HxW) {}",
            path.display(),
            report.files,
            report.records,
            report.bad,
            if sizes.is_empty() {
                "none".to_string()
            } else {
                sizes.join(", ")
            }
        );
        if report.label_counts.len() <= 32 && !report.label_counts.is_empty() {
            let per: Vec<String> = report.label_counts.iter().map(|(l, n)| format!("{l}:{n}")).collect();
            println!("  per label: {}", per.join(" "));
        }
    }
    if !failed.is_empty() {
        bail!("could not read {}", failed.join(", "));
    }
    if bad > 0 {
        bail!("{bad} bad record(s)");
    }
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
        run(args(&["pack", "--help"])).unwrap();
        run(args(&["verify", "-h"])).unwrap();
        let e = run(args(&["pack", "--format", "fashion-mnist", "--bogus"])).unwrap_err();
        assert!(e.to_string().contains("--bogus"), "{e}");
        let e = run(args(&["pack", "--shards", "x"])).unwrap_err();
        assert!(e.to_string().starts_with("--shards \"x\""), "{e}");
        let e = run(args(&["pack", "--per-class", "600"])).unwrap_err();
        assert!(e.to_string().contains("expected TRAIN,TEST"), "{e}");
        let e = run(args(&["pack", "--format", "mnist", "--out", "/tmp/x"])).unwrap_err();
        assert!(e.to_string().contains("unsupported"), "{e}");
        let e = run(args(&["frobnicate"])).unwrap_err();
        assert!(e.to_string().contains("frobnicate"), "{e}");
        assert!(run(args(&["verify"])).is_err());
        assert_eq!(parse_per_class("600,100").unwrap(), (600, 100));
    }

    #[test]
    fn verify_passes_good_and_fails_bad_sets() {
        let dir = temp_dir("verify");
        let mut jpeg = Vec::new();
        jpeg_encoder_grey(&mut jpeg);
        let good = dir.join("good");
        lsc_data::write_shards(vec![(jpeg.clone(), 3), (jpeg, 4)].into_iter(), &good, 1).unwrap();
        run(vec!["verify".into(), good.clone().into()]).unwrap();
        let bad = dir.join("bad");
        std::fs::write(&bad, "AAAA\t1\nnot a record\n").unwrap();
        let e = run(vec!["verify".into(), good.into(), bad.into()]).unwrap_err();
        assert!(e.to_string().contains("2 bad record"), "{e}");
        let e = run(vec!["verify".into(), dir.join("absent").into()]).unwrap_err();
        assert!(e.to_string().contains("could not read"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A 4x4 grey JPEG (via the pack module's encoder).
    fn jpeg_encoder_grey(out: &mut Vec<u8>) {
        *out = lsc_data::pack::encode_grey_jpeg(&[128; 16], 4, 4, 95).unwrap();
    }
}
