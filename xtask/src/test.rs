//! `cargo xtask test`: the test matrix. The CPU column is `cargo test --workspace`; the GPU
//! column runs the GPU tests when a CUDA driver and device are present and otherwise reports
//! itself skipped with the reason. `LSC_REQUIRE_GPU=1` turns that skip into a failure.

use crate::{cargo, run_cmd};
use anyhow::{Result, bail};
use std::process::Command;

/// Probes the GPU through the `lsc gpu` command: Ok(description) or Err(reason).
fn probe() -> Result<Result<String, String>> {
    let out = cargo()
        .args(["run", "--quiet", "-p", "lsc-cli", "--", "gpu"])
        .output()?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    Ok(if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr).trim_start_matches("error: ").to_string())
    })
}

fn require_gpu() -> bool {
    std::env::var("LSC_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// The GPU tests: every test whose name carries `gpu`, with a GPU required and NCCL built in.
fn gpu_tests() -> Command {
    let mut c = cargo();
    // NCCL lives behind lsc-comm's `cuda` feature (cudarc, loaded at run time).
    c.args(["test", "--workspace", "--features", "lsc-comm/cuda", "gpu"])
        .env("LSC_REQUIRE_GPU", "1");
    c
}

pub fn run(extra: &[String]) -> Result<()> {
    println!("== test matrix: CPU column (cargo test --workspace) ==");
    // The GPU column decides about a missing GPU below, with its own message.
    run_cmd(
        cargo()
            .args(["test", "--workspace"])
            .args(extra)
            .env_remove("LSC_REQUIRE_GPU"),
    )?;
    println!("== test matrix: GPU column ==");
    let gpu = match probe()? {
        Ok(desc) => {
            println!("{desc}");
            run_cmd(&mut gpu_tests())?;
            "passed".to_string()
        }
        Err(why) if require_gpu() => bail!("GPU column: LSC_REQUIRE_GPU=1 but no GPU: {why}"),
        Err(why) => format!("SKIPPED ({why})"),
    };
    println!("== test matrix ==");
    println!("  CPU column: passed");
    println!("  GPU column: {gpu}");
    Ok(())
}

/// Every GPU check in one go, with a GPU required (for the occasional GPU machine).
pub fn gpu_check() -> Result<()> {
    match probe()? {
        Ok(desc) => println!("{desc}"),
        Err(why) => bail!("gpu-check: {why}"),
    }
    run_cmd(&mut gpu_tests())?;
    println!("gpu-check: all GPU checks passed");
    Ok(())
}
