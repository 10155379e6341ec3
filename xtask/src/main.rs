//! `cargo xtask`: the project's entry points (see the cargo-xtask convention).
//!
//! Commands shell out to cargo and to the `lsc` binary so that this crate stays dependency-free
//! and everything shares one target directory.

mod dataset; // defines: `cargo xtask dataset fashion-mnist`
mod test; // defines: `cargo xtask test` (the CPU and GPU columns), `cargo xtask gpu-check`

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;

fn main() {
    if let Err(e) = real_main() {
        eprintln!("xtask error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r.to_vec()),
        None => ("help", vec![]),
    };
    let user_dir = std::env::current_dir().context("reading the current directory")?;
    std::env::set_current_dir(project_root()).context("entering the project root")?;
    // `cargo xtask train -- --epochs 3` and `cargo xtask train --epochs 3` are the same.
    let rest: Vec<String> = match rest.split_first() {
        Some((first, tail)) if first == "--" => tail.to_vec(),
        _ => rest,
    };
    match cmd {
        "dataset" => dataset::run(&rest),
        "train" => {
            let args = absolute_paths(&rest, &user_dir, &["--config", "--data"]);
            run_cmd(
                cargo()
                    .args(["run", "--quiet", "-p", "lsc-cli", "--", "train"])
                    .args(&args),
            )
        }
        "test" => test::run(&rest),
        "gpu-check" => test::gpu_check(),
        // `bench-NAME` runs the harness-free bench target NAME (dashes become underscores).
        "bench-fc" | "bench-comm" | "bench-head-dtype" | "bench-kernels" | "bench-ckpt" | "bench-data"
        | "bench-backbone" => {
            let target = cmd.trim_start_matches("bench-").replace('-', "_");
            run_cmd(
                cargo()
                    .args(["bench", "-q", "-p", "lsc-benches", "--bench", &target, "--"])
                    .args(&rest),
            )
        }
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(())
        }
        other => bail!("unknown xtask command `{other}`\n{HELP}"),
    }
}

const HELP: &str = "\
cargo xtask COMMAND
  train [lsc train flags]      train the default model on datasets/fashion-mnist-mini (CPU)
  test                         run every test: the CPU column, then the GPU column (or its skip reason)
  dataset fashion-mnist [--mini] [--out DIR]
                               convert Debian's dataset-fashion-mnist to PLSC base64 shards
  gpu-check                    every GPU check in one go (LSC_REQUIRE_GPU=1)
  bench-fc [--classes C] [--batch B] [--dim D] [--ranks N] [--dtype f32|bf16]
           [--sample-rate R] [--steps S] [--loss arcface|cosface|softmax]
                               the fused margin-softmax head step against the plain GEMM rate
  bench-comm [--sizes 4KiB,1MiB,16MiB] [--ranks 2,4] [--reps N]
                               every collective over thread ranks, against a single-thread memcpy
  bench-head-dtype [--classes C] [--dim D] [--batch B] [--steps N] [--noise X] [--lr LR]
                   [--loss arcface|cosface] [--scale S] [--margin M] [--rtn]
                               bf16 against f32 head weights on a learnable synthetic task
  bench-kernels                GEMM and im2col rates
  bench-backbone [--model NAME] [--batch B] [--steps N] [--threads T] [--infer-only] [--profile]
                               IResNet train step and inference images/s, peak RSS, per-layer profile
  bench-data [--images N] [--reps R]
                               112x112 JPEG decode + flip + normalise, images/s per core
  bench-ckpt [--classes C] [--dim D] [--dtype f32|bf16] [--reps N] [--dir DIR]
                               checkpoint save and load of a big head, against a plain file copy
";

/// Rewrites the values of the path flags in `args` relative to `base` (xtask runs in the
/// project root, but the user named the paths from where they stood).
fn absolute_paths(args: &[String], base: &std::path::Path, flags: &[&str]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        out.push(a.clone());
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f, Some(v)),
            None => (a.as_str(), None),
        };
        if flags.contains(&flag) {
            let fix = |v: &str| base.join(v).display().to_string();
            match inline {
                Some(v) => *out.last_mut().expect("just pushed") = format!("{flag}={}", fix(v)),
                None => {
                    if let Some(v) = it.next() {
                        out.push(fix(v));
                    }
                }
            }
        }
    }
    out
}

/// The workspace root (the parent of this crate's manifest directory).
pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits one level below the root")
        .to_path_buf()
}

/// Runs a command to completion, failing with its command line when it exits non-zero.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let line = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {line}"))?;
    if !status.success() {
        bail!("{line} failed with {status}");
    }
    Ok(())
}

/// `cargo` as invoked by the user (respects `$CARGO`).
pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}
