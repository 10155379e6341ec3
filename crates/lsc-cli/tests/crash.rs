//! kill -9 in the middle of a save: `lsc train` (two thread ranks, a checkpoint every step,
//! keep_last 2) is made to SIGKILL itself at seeded random I/O points of its saves (file
//! creation, every written block, fsync, the manifest, the renames, rotation; see
//! `lsc_ckpt::crash`), and at every non-data point of one save. After each kill the newest checkpoint must load with every checksum
//! right, and resuming from it must end bit-identical to the run that was never killed.

mod common;

use common::root;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn config(dir: &Path, ckpt: &Path, resume: bool) -> PathBuf {
    let p = dir.join(if resume { "resume.toml" } else { "train.toml" });
    let resume = if resume {
        format!("resume = \"{}\"\n", ckpt.display())
    } else {
        String::new()
    };
    std::fs::write(
        &p,
        format!(
            "[data]\ntest = \"\"\nlimit = 192\nbatch_size = 16\n\n[train]\nranks = 2\nepochs = 1\n\
             save_every_steps = 1\nkeep_last = 2\ncheckpoint_dir = \"{}\"\n{resume}",
            ckpt.display()
        ),
    )
    .unwrap();
    p
}

fn lsc(cfg: &Path, env: &[(&str, String)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lsc"));
    c.args(["train", "--quiet", "--config"]).arg(cfg).current_dir(root());
    c.env("RAYON_NUM_THREADS", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("lsc runs")
}

/// The files and hashes of the newest checkpoint, checked.
fn newest(ckpt: &Path) -> (u64, Vec<(String, String)>) {
    let (_, m) = lsc_ckpt::load_manifest(ckpt, true).unwrap_or_else(|e| panic!("{}: {e}", ckpt.display()));
    (m.step, m.files.into_iter().map(|f| (f.name, f.hash)).collect())
}

#[test]
fn a_save_killed_at_any_point_leaves_the_last_checkpoint_and_resumes_exactly() {
    let tmp = std::env::temp_dir().join(format!("lsc-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();

    // The run never killed, listing its crash points.
    let whole = tmp.join("whole");
    let o = lsc(&config(&tmp, &whole, false), &[("LSC_CKPT_CRASH_REPORT", "1".into())]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let points: Vec<(u64, String)> = err
        .lines()
        .filter_map(|l| l.strip_prefix("lsc-ckpt crash point "))
        .map(|l| {
            let (n, what) = l.split_once(": ").unwrap();
            (n.parse().unwrap(), what.to_string())
        })
        .collect();
    let (steps, reference) = newest(&whole);
    assert_eq!(steps, 6);
    // Points after the first save is committed, so a good checkpoint always exists.
    let first = points.iter().find(|p| p.1 == "committed").unwrap().0;
    let last = points.last().unwrap().0;
    assert!(last - first > 100, "only {} points", last - first);
    for kind in ["write", "fsync", "entry", "manifest", "rename", "rotate"] {
        assert!(points.iter().any(|p| p.1 == kind), "no `{kind}` point");
    }

    // 24 seeded random points, spread over every save after the first.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut chosen = Vec::new();
    while chosen.len() < 24 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let p = first + 1 + x % (last - first);
        if !chosen.contains(&p) {
            chosen.push(p);
        }
    }
    // And every point of the second save that is not a data block: each file's creation and
    // fsync, each entry, the manifest, the renames, rotation.
    let second = points.iter().filter(|p| p.1 == "committed").nth(1).unwrap().0;
    for (n, what) in &points[first as usize..second as usize] {
        if what != "write" && !chosen.contains(n) {
            chosen.push(*n);
        }
    }
    // Rotation starts with the third save (keep_last 2): its first removal too.
    let rotate = points.iter().find(|p| p.1 == "rotate").unwrap().0;
    if !chosen.contains(&rotate) {
        chosen.push(rotate);
    }
    chosen.sort_unstable();
    for p in chosen {
        let what = &points[(p - 1) as usize].1;
        let ckpt = tmp.join(format!("cut-{p}"));
        let o = lsc(&config(&tmp, &ckpt, false), &[("LSC_CKPT_CRASH_AT", p.to_string())]);
        assert_eq!(
            o.status.signal(),
            Some(9),
            "point {p} ({what}): not killed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let (step, _) = newest(&ckpt);
        assert!(
            (1..6).contains(&step),
            "point {p} ({what}): newest checkpoint at step {step}"
        );
        let o = lsc(&config(&tmp, &ckpt, true), &[]);
        assert!(
            o.status.success(),
            "point {p} ({what}): resume failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            newest(&ckpt),
            (6, reference.clone()),
            "point {p} ({what}): resumed run differs"
        );
        println!("killed at point {p} ({what}): step {step} loaded, resumed to the same end");
        std::fs::remove_dir_all(&ckpt).unwrap();
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}
