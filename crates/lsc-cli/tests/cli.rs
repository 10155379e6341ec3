//! The `lsc` binary as a user runs it: flags, error messages, and the final JSON line.

mod common;

use common::{lsc, stderr};
use std::path::PathBuf;

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lsc-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn a_short_training_run_ends_with_the_json_summary() {
    let o = lsc(&[
        "train",
        "--limit",
        "128",
        "--batch-size",
        "32",
        "--epochs",
        "1",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let last = out.lines().last().unwrap();
    for key in [
        "\"epochs\":1",
        "\"final_loss\":",
        "\"test_top1\":0.",
        "\"images_per_s\":",
        "\"wall_s\":",
    ] {
        assert!(last.starts_with('{') && last.contains(key), "{last}");
    }
}

#[test]
fn bad_paths_and_configs_are_named() {
    let o = lsc(&["train", "--config", "/no/such/config.toml"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/no/such/config.toml"), "{}", stderr(&o));

    let bad = temp_file("bad.toml", "[optim]\nlr = 0.1\nmomentum = \n");
    let o = lsc(&["train", "--config", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("bad.toml") && e.contains("line 3"), "{e}");

    let unknown = temp_file("unknown.toml", "[train]\nepochz = 3\n");
    let e = stderr(&lsc(&["train", "--config", unknown.to_str().unwrap()]));
    assert!(e.contains("unknown.toml") && e.contains("epochz"), "{e}");

    let e = stderr(&lsc(&["train", "--data", "/no/such/dir"]));
    assert!(e.contains("--data /no/such/dir"), "{e}");
    let e = stderr(&lsc(&["train", "--epochs", "ten"]));
    assert!(e.contains("--epochs ten"), "{e}");
    let e = stderr(&lsc(&["train", "--epoch", "3"]));
    assert!(e.contains("--epoch"), "{e}");
}

#[test]
fn flags_override_the_config() {
    let cfg = temp_file(
        "ok.toml",
        "[head]\nloss = \"cosface\"\nmargin = 0.35\n[train]\nepochs = 7\n",
    );
    let o = lsc(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--epochs",
        "3",
        "--print-config",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("epochs = 3") && out.contains("loss = \"cosface\"") && out.contains("margin = 0.35"),
        "{out}"
    );
}
