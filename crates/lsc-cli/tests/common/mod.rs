//! What every test of the `lsc` binary needs: where the repository is and how to run `lsc`
//! there. Each test file uses a part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The repository root (the committed data sets are named from there).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `lsc ARGS`, run from the repository root.
pub fn lsc_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lsc"));
    c.args(args).current_dir(root());
    c
}

/// `lsc ARGS` run to completion.
pub fn lsc(args: &[&str]) -> Output {
    lsc_cmd(args).output().expect("lsc runs")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn stderr(o: &Output) -> String {
    text(&o.stderr)
}
