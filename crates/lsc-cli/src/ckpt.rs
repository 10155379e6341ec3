//! `lsc ckpt inspect DIR`: a checkpoint's manifest, file checks and tensors.
//! `lsc ckpt reshard DIR --ranks N --out DIR2`: re-partition the head for N ranks.

use anyhow::{Result, bail};
use lsc_ckpt::load_manifest;
use std::ffi::OsString;
use std::path::PathBuf;

const USAGE: &str = "\
usage: lsc ckpt inspect DIR
       lsc ckpt reshard DIR --ranks N --out DIR2

  DIR   a checkpoint directory (step-N/), or a checkpoint root (its newest checkpoint is taken)

inspect  prints the manifest, checks every file's size and checksum, and lists each
         tensor's name, dtype and shape.
reshard  re-partitions the head's class shards (weights, momentum, bias) for N ranks into
         the new checkpoint DIR2, streaming a tile at a time; the backbone and trainer state
         are copied. Training also re-partitions by itself when resumed on a different number
         of ranks: reshard is for doing it once, offline.
";

pub fn run(args: Vec<OsString>) -> Result<()> {
    let mut it = args.into_iter();
    match it.next().as_ref().and_then(|a| a.to_str()) {
        Some("inspect") => {}
        Some("reshard") => return reshard(it.collect()),
        Some("-h" | "--help") => {
            print!("{USAGE}");
            return Ok(());
        }
        Some(other) => bail!("unknown ckpt command `{other}`\n\n{USAGE}"),
        None => bail!("missing ckpt command\n\n{USAGE}"),
    }
    let Some(dir) = it.next() else {
        bail!("ckpt inspect: missing DIR\n\n{USAGE}")
    };
    if dir == "-h" || dir == "--help" {
        print!("{USAGE}");
        return Ok(());
    }
    if let Some(extra) = it.next() {
        bail!("ckpt inspect: unexpected argument {extra:?}\n\n{USAGE}");
    }
    let (dir, m) = load_manifest(&PathBuf::from(dir), true)?;
    println!("checkpoint {}", dir.display());
    println!("  format {} version {}", m.format, m.version);
    println!(
        "  step {} (epoch {} done, {} steps into the next)",
        m.step, m.epoch, m.step_in_epoch
    );
    println!(
        "  classes {} x {} dims over {} rank(s); head dtype {} (stored as {})",
        m.num_classes, m.emb_dim, m.world_size, m.head_dtype, m.file_dtype
    );
    for s in &m.shards {
        println!(
            "  shard rank {}: classes [{}, {}) in {}",
            s.rank, s.class_start, s.class_end, s.file
        );
    }
    for f in &m.files {
        println!("  file {} ({} bytes, lsc64 {}): checksum ok", f.name, f.bytes, f.hash);
        let file = lsc_ckpt::TensorFile::open(&dir.join(&f.name))?;
        for (name, t) in file.tensors() {
            println!("    {name} {} {:?}", t.dtype.name(), t.shape);
        }
    }
    println!("  config:");
    for line in m.config.lines() {
        println!("    {line}");
    }
    Ok(())
}

fn reshard(args: Vec<OsString>) -> Result<()> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let (mut src, mut ranks, mut out) = (None::<PathBuf>, None::<usize>, None::<PathBuf>);
    while let Some(arg) = p.next()? {
        match arg {
            Long("ranks") => ranks = Some(p.value()?.parse()?),
            Long("out") => out = Some(p.value()?.into()),
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(());
            }
            Value(v) if src.is_none() => src = Some(v.into()),
            other => bail!("ckpt reshard: {}\n\n{USAGE}", other.unexpected()),
        }
    }
    let (Some(src), Some(ranks), Some(out)) = (src, ranks, out) else {
        bail!("ckpt reshard: needs DIR, --ranks N and --out DIR2\n\n{USAGE}");
    };
    let t = std::time::Instant::now();
    let dir = lsc_train::checkpoint::reshard(&src, ranks, &out)?;
    let (_, m) = load_manifest(&dir, false)?;
    println!(
        "wrote {} ({} classes over {ranks} rank(s), step {}) in {:.2}s",
        dir.display(),
        m.num_classes,
        m.step,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
