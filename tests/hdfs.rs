//! Checkpoints mirrored to a real HDFS through `hadoop fs` (PLSC's fs_checkpoint_dir): each
//! save is pushed as the configured user, a fresh machine pulls the newest and resumes
//! bit-identically, keep_last applies remotely, and a refused upload is retried, reported, and
//! leaves the local checkpoint in place.
//!
//! Needs `LSC_HDFS_NAME` (e.g. hdfs://127.0.0.1:9000) and `LSC_HADOOP_BIN` (a `hadoop`
//! executable); `.ci/run` starts one from `.ci/hdfs/` and sets `LSC_REQUIRE_HDFS=1`, which turns
//! the skip into a failure.

use lsc_train::{Config, train};
use std::path::{Path, PathBuf};
use std::process::Command;

struct Hdfs {
    name: String,
    bin: PathBuf,
}

fn hdfs() -> Option<Hdfs> {
    match (std::env::var("LSC_HDFS_NAME"), std::env::var("LSC_HADOOP_BIN")) {
        (Ok(name), Ok(bin)) => Some(Hdfs { name, bin: bin.into() }),
        _ => {
            let why = "HDFS test SKIPPED: set LSC_HDFS_NAME and LSC_HADOOP_BIN (.ci/run starts one from .ci/hdfs/)";
            if std::env::var("LSC_REQUIRE_HDFS").is_ok_and(|v| v == "1") {
                panic!("LSC_REQUIRE_HDFS=1 but {why}");
            }
            eprintln!("{why}");
            None
        }
    }
}

impl Hdfs {
    /// `hadoop fs ARGS` as `user`; returns stdout, panics with stderr on failure.
    fn fs(&self, user: &str, args: &[&str]) -> String {
        let o = Command::new(&self.bin)
            .arg("fs")
            .args(["-D", &format!("fs.default.name={}", self.name)])
            .args(args)
            .env("HADOOP_USER_NAME", user)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "hadoop fs {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

fn config(h: &Hdfs, local: &Path, remote: &str, user: &str) -> Config {
    let mut c = Config::defaults();
    let d = lsc_tests::mini_dataset();
    c.data.train = d.join("train");
    c.data.test = PathBuf::new();
    c.data.limit = 128;
    c.data.batch_size = 32;
    c.train.epochs = 2;
    c.train.keep_last = 1;
    c.train.checkpoint_dir = local.to_path_buf();
    c.train.fs_checkpoint_dir = remote.to_string();
    c.train.fs_name = h.name.clone();
    c.train.fs_user = user.to_string();
    c.train.hadoop_bin = h.bin.clone();
    c.train.fs_retries = 1;
    c.train.fs_backoff_s = 0.2;
    c
}

fn hashes(root: &Path) -> Vec<(String, String)> {
    let (_, m) = lsc_ckpt::load_manifest(root, true).unwrap();
    m.files.into_iter().map(|f| (f.name, f.hash)).collect()
}

#[test]
fn checkpoints_go_to_hdfs_and_a_fresh_machine_resumes_from_there() {
    let Some(h) = hdfs() else { return };
    let pid = std::process::id();
    let tmp = std::env::temp_dir().join(format!("lsc-hdfs-{pid}"));
    let _ = std::fs::remove_dir_all(&tmp);
    let user = format!("lsc{pid}");
    let home = format!("/user/{user}");
    // The superuser (the daemons' user) makes the user's home, as an admin would.
    let admin = std::env::var("USER").unwrap_or_else(|_| "root".into());
    h.fs(&admin, &["-mkdir", "-p", &home]);
    h.fs(&admin, &["-chown", &user, &home]);
    let remote = format!("{home}/ckpt");

    // The reference: 8 uninterrupted steps, local only.
    let mut plain = config(&h, &tmp.join("plain"), "", "");
    plain.train.fs_name = String::new();
    assert_eq!(train(&plain, true).unwrap().steps, 8);

    // Machine A trains one epoch (4 steps), saving and pushing as `user`.
    let mut a = config(&h, &tmp.join("a"), &remote, &user);
    a.train.max_steps = 4;
    assert_eq!(train(&a, true).unwrap().steps, 4);
    let ls = h.fs(&user, &["-ls", &remote]);
    assert!(ls.contains("step-000000004"), "{ls}");
    let owner = h.fs(
        &user,
        &["-stat", "%u", &format!("{remote}/step-000000004/manifest.toml")],
    );
    let owner = owner.lines().last().unwrap_or("").trim();
    assert_eq!(owner, user, "pushed files belong to the configured user");

    // Machine B has nothing local: it pulls step 4 and finishes, exactly as the plain run did.
    let mut b = config(&h, &tmp.join("b"), &remote, &user);
    b.train.resume = tmp.join("b");
    assert_eq!(train(&b, true).unwrap().steps, 8);
    assert_eq!(hashes(&tmp.join("b")), hashes(&tmp.join("plain")));
    // keep_last = 1 applies remotely too.
    let ls = h.fs(&user, &["-ls", &remote]);
    assert!(ls.contains("step-000000008") && !ls.contains("step-000000004"), "{ls}");

    // An upload the store refuses (a directory the user may not write) is retried, reported,
    // and the local checkpoint stays.
    let mut c = config(&h, &tmp.join("c"), "/not-writable/ckpt", &user);
    c.train.max_steps = 4;
    let e = train(&c, true).unwrap_err().to_string();
    assert!(
        e.contains("was saved locally") && e.contains("2 attempts") && e.contains("Permission denied"),
        "{e}"
    );
    assert_eq!(lsc_ckpt::load_manifest(&tmp.join("c"), true).unwrap().1.step, 4);

    h.fs(&admin, &["-rm", "-r", "-f", "-skipTrash", &home]);
    std::fs::remove_dir_all(&tmp).unwrap();
}
