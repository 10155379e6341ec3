//! `cargo xtask dataset fashion-mnist [--mini] [--out DIR]`: converts Debian's
//! `dataset-fashion-mnist` (installing it with apt when absent) into PLSC base64 shards with
//! `lsc data pack`, then checks the result with `lsc data verify`.

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;

const SRC: &str = "/usr/share/datasets/fashion-mnist";
const PACKAGE: &str = "dataset-fashion-mnist";

const USAGE: &str = "\
cargo xtask dataset fashion-mnist [--mini] [--out DIR]
  --mini      the class-balanced subset: first 600 train / 100 test images of each class
              (6,000 / 1,000), into datasets/fashion-mnist-mini
  --out DIR   output directory [default: datasets/fashion-mnist-mini with --mini,
              else datasets/fashion-mnist (all 60,000 / 10,000)]
Installs Debian's dataset-fashion-mnist with apt-get if /usr/share/datasets/fashion-mnist is absent.
";

pub fn run(args: &[String]) -> Result<()> {
    let mut mini = false;
    let mut out = None;
    let mut name = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--mini" => mini = true,
            "--out" => {
                out = Some(
                    it.next()
                        .with_context(|| format!("--out needs a directory\n\n{USAGE}"))?
                        .clone(),
                )
            }
            "--help" | "-h" => {
                print!("{USAGE}");
                return Ok(());
            }
            flag if flag.starts_with('-') => bail!("unknown flag `{flag}`\n\n{USAGE}"),
            value if name.is_none() => name = Some(value.to_string()),
            value => bail!("unexpected argument `{value}`\n\n{USAGE}"),
        }
    }
    match name.as_deref() {
        Some("fashion-mnist") => {}
        Some(other) => bail!("unknown dataset `{other}` (known: fashion-mnist)\n\n{USAGE}"),
        None => bail!("which dataset?\n\n{USAGE}"),
    }
    let out = out.unwrap_or_else(|| {
        if mini {
            "datasets/fashion-mnist-mini".into()
        } else {
            "datasets/fashion-mnist".into()
        }
    });
    ensure_installed()?;

    let mut pack = crate::cargo();
    pack.args(["run", "--quiet", "-p", "lsc-cli", "--", "data", "pack"]);
    pack.args(["--format", "fashion-mnist", "--src", SRC, "--out", &out]);
    if mini {
        pack.args(["--per-class", "600,100"]);
    }
    crate::run_cmd(&mut pack)?;

    let mut verify = crate::cargo();
    verify.args(["run", "--quiet", "-p", "lsc-cli", "--", "data", "verify"]);
    verify.args([format!("{out}/train"), format!("{out}/test")]);
    crate::run_cmd(&mut verify)
}

/// Installs `dataset-fashion-mnist` with apt-get unless its training images are present.
fn ensure_installed() -> Result<()> {
    let probe = Path::new(SRC).join("train-images-idx3-ubyte.gz");
    if probe.exists() {
        return Ok(());
    }
    println!(
        "{} is absent: installing Debian's {PACKAGE} with apt-get",
        probe.display()
    );
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!(
            "{} is absent and apt-get is not available: install Debian's {PACKAGE} \
             (or copy its files into {SRC}) and retry",
            probe.display()
        );
    }
    // Use sudo when not root and sudo exists.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let apt = |args: &[&str]| {
        let mut cmd = if root || Command::new("sudo").arg("-n").arg("true").output().is_err() {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        };
        cmd.args(args);
        cmd
    };
    crate::run_cmd(&mut apt(&["update"])).context("apt-get update")?;
    crate::run_cmd(&mut apt(&["install", "-y", PACKAGE])).with_context(|| format!("apt-get install -y {PACKAGE}"))?;
    if !probe.exists() {
        bail!("installed {PACKAGE} but {} is still absent", probe.display());
    }
    Ok(())
}
