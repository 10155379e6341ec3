//! `cargo xtask`: the project's entry points (see the cargo-xtask convention).
//!
//! Commands shell out to cargo and to the `lsc` binary so that this crate stays dependency-free
//! and everything shares one target directory.

mod dataset; // defines: `cargo xtask dataset fashion-mnist`
mod test; // defines: `cargo xtask test` (the CPU and GPU columns), `cargo xtask gpu-check`

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r.to_vec()),
        None => ("help", vec![]),
    };
    std::env::set_current_dir(project_root()).context("entering the project root")?;
    match cmd {
        "dataset" => dataset::run(&rest),
        "train" => run_cmd(
            cargo()
                .args(["run", "--quiet", "-p", "lsc-cli", "--", "train"])
                .args(&rest),
        ),
        "test" => test::run(&rest),
        "gpu-check" => test::gpu_check(),
        "bench-fc" => run_cmd(
            cargo()
                .args(["bench", "-q", "-p", "lsc-benches", "--bench", "fc", "--"])
                .args(&rest),
        ),
        "bench-kernels" => run_cmd(
            cargo()
                .args(["bench", "-q", "-p", "lsc-benches", "--bench", "kernels", "--"])
                .args(&rest),
        ),
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
  bench-kernels                GEMM and im2col rates
";

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
