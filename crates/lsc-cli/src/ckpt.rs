//! `lsc ckpt inspect DIR`: a checkpoint's manifest, file checks and tensors.

use anyhow::{Result, bail};
use lsc_ckpt::{Data, load_manifest, read_safetensors};
use std::ffi::OsString;
use std::path::PathBuf;

const USAGE: &str = "\
usage: lsc ckpt inspect DIR

  DIR   a checkpoint directory (step-N/), or a checkpoint root (its newest checkpoint is shown)

Prints the manifest, checks every file's size and checksum, and lists each tensor's
name, dtype and shape.
";

pub fn run(args: Vec<OsString>) -> Result<()> {
    let mut it = args.into_iter();
    match it.next().as_ref().and_then(|a| a.to_str()) {
        Some("inspect") => {}
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
        let (tensors, _) = read_safetensors(&dir.join(&f.name))?;
        for t in tensors.values() {
            let dtype = match t.data {
                Data::F32(_) => "F32",
                Data::Bf16(_) => "BF16",
                Data::U64(_) => "U64",
            };
            println!("    {} {dtype} {:?}", t.name, t.shape);
        }
    }
    println!("  config:");
    for line in m.config.lines() {
        println!("    {line}");
    }
    Ok(())
}
