//! `lsc train` under `mpirun`.
//!
//! Built with `--features mpi`: two MPI processes train exactly as two thread ranks do (the
//! same per-step losses, epoch loss and test top-1 for the same seed), on one host and across
//! two network-namespace "hosts" joined by a veth pair (`crates/lsc-comm/tests/netns/`); a
//! `--ranks` that contradicts `mpirun -np` and a failing rank are clear errors.
//! Built without it: a multi-process launch is refused with the hint to build with
//! `--features mpi`.
//!
//! Without `mpirun` the MPI tests print a SKIPPED line, or fail when `LSC_REQUIRE_MPI=1`;
//! without permission to create network namespaces the two-host test skips, or fails when
//! `LSC_REQUIRE_NETNS=1`.

mod common;

use common::root;
use std::io::Read;
#[cfg(feature = "mpi")]
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// `true` when `mpirun` runs; otherwise prints the skip line (or panics under
/// `LSC_REQUIRE_MPI=1`).
fn have_mpirun(test: &str) -> bool {
    match Command::new("mpirun").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        other => {
            let why = match other {
                Ok(o) => format!("mpirun --version failed: {}", String::from_utf8_lossy(&o.stderr).trim()),
                Err(e) => format!("mpirun not found: {e}"),
            };
            assert!(
                !required("LSC_REQUIRE_MPI"),
                "{test}: LSC_REQUIRE_MPI=1 but {why} (Debian: apt-get install openmpi-bin libopenmpi-dev)"
            );
            eprintln!("SKIPPED (mpi) {test}: {why}");
            false
        }
    }
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
    secs: f64,
}

impl Run {
    fn show(&self) -> String {
        format!(
            "ok {} after {:.1} s\n--- stdout ---\n{}--- stderr ---\n{}",
            self.ok, self.secs, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` from the repository root, killing it after `limit`.
fn run(mut cmd: Command, limit: Duration) -> Run {
    cmd.current_dir(root())
        .env("RAYON_NUM_THREADS", "1")
        .env("OMPI_MCA_mpi_yield_when_idle", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let mut child = cmd.spawn().expect("spawn");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let so = std::thread::spawn(move || {
        let mut b = Vec::new();
        out.read_to_end(&mut b).ok();
        b
    });
    let se = std::thread::spawn(move || {
        let mut b = Vec::new();
        err.read_to_end(&mut b).ok();
        b
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if t.elapsed() > limit {
            child.kill().ok();
            child.wait().ok();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // mpirun forwards the ranks' output; drop any NUL bytes it carries.
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).replace('\0', "");
    Run {
        ok: status.is_some_and(|s| s.success()),
        stdout: text(so.join().unwrap()),
        stderr: text(se.join().unwrap()),
        secs: t.elapsed().as_secs_f64(),
    }
}

fn lsc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lsc"))
}

fn mpirun(np: usize) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", &np.to_string()]);
    c
}

/// The small run both engines train: 256 records, 16 per rank, 2 epochs, every step logged.
fn train_args() -> Vec<String> {
    let cfg = std::env::temp_dir().join(format!("lsc-mpi-test-{}.toml", std::process::id()));
    std::fs::write(&cfg, "[train]\nlog_every = 1\n").unwrap();
    [
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--limit",
        "256",
        "--batch-size",
        "16",
        "--epochs",
        "2",
        "--seed",
        "7",
    ]
    .map(String::from)
    .to_vec()
}

/// What a run reports: every logged step's loss, and the summary's epoch losses and top-1.
#[cfg(feature = "mpi")]
#[derive(Debug)]
struct Losses {
    steps: Vec<(String, f64)>,
    epochs: Vec<f64>,
    top1: f64,
}

#[cfg(feature = "mpi")]
fn losses(r: &Run) -> Losses {
    let steps = r
        .stderr
        .lines()
        .filter_map(|l| {
            let at = l.find("epoch ")?;
            let words: Vec<&str> = l[at..].split_whitespace().collect();
            // "epoch E/N step S/M loss X ..."
            (words.len() > 5 && words[2] == "step" && words[4] == "loss")
                .then(|| Some((format!("{} {}", words[1], words[3]), words[5].parse().ok()?)))
                .flatten()
        })
        .collect();
    let json = r.stdout.lines().last().unwrap_or("");
    let field = |k: &str| -> &str {
        let at = json
            .find(&format!("\"{k}\":"))
            .unwrap_or_else(|| panic!("no {k} in {json}"));
        &json[at + k.len() + 3..]
    };
    let epochs = field("epoch_losses")
        .trim_start_matches('[')
        .split(']')
        .next()
        .unwrap()
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    let top1 = field("test_top1").split([',', '}']).next().unwrap().parse().unwrap();
    Losses { steps, epochs, top1 }
}

/// The losses of `b` match `a`'s within floating-point tolerance (both printed).
#[cfg(feature = "mpi")]
fn assert_same_losses(what: &str, a: &Run, b: &Run) {
    let (la, lb) = (losses(a), losses(b));
    println!("{what}:");
    for (x, y) in la.steps.iter().zip(&lb.steps) {
        println!("  epoch/step {:>9}  threads {:.4}  mpi {:.4}", x.0, x.1, y.1);
    }
    println!("  epoch losses  threads {:?}  mpi {:?}", la.epochs, lb.epochs);
    println!("  test top-1    threads {}  mpi {}", la.top1, lb.top1);
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-4 * x.abs().max(1.0);
    assert_eq!(la.steps.len(), 16, "{}", a.show());
    assert_eq!(
        la.steps.iter().map(|s| &s.0).collect::<Vec<_>>(),
        lb.steps.iter().map(|s| &s.0).collect::<Vec<_>>(),
        "{what}: the steps logged differ\n{}",
        b.show()
    );
    for (x, y) in la.steps.iter().zip(&lb.steps) {
        assert!(close(x.1, y.1), "{what}: step {}: {} vs {}", x.0, x.1, y.1);
    }
    assert_eq!(la.epochs.len(), lb.epochs.len(), "{what}");
    for (x, y) in la.epochs.iter().zip(&lb.epochs) {
        assert!(close(*x, *y), "{what}: epoch loss {x} vs {y}");
    }
    assert!(
        (la.top1 - lb.top1).abs() <= 1e-3,
        "{what}: top-1 {} vs {}",
        la.top1,
        lb.top1
    );
}

#[cfg(not(feature = "mpi"))]
#[test]
fn mpi_launch_without_the_feature_is_refused() {
    // What mpirun sets, without mpirun.
    let mut c = lsc();
    c.args(["train", "--epochs", "1"])
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .env("OMPI_COMM_WORLD_RANK", "0");
    let r = run(c, Duration::from_secs(60));
    assert!(!r.ok, "{}", r.show());
    assert!(r.stderr.contains("built without MPI support"), "{}", r.show());
    assert!(r.stderr.contains("--features mpi"), "{}", r.show());
    // One process under a launcher is a plain run.
    let mut c = lsc();
    c.args(["train", "--print-config"]).env("OMPI_COMM_WORLD_SIZE", "1");
    assert!(run(c, Duration::from_secs(60)).ok);
    // And under a real mpirun, both processes refuse.
    if have_mpirun("mpi_launch_without_the_feature_is_refused") {
        let mut c = mpirun(2);
        c.arg(env!("CARGO_BIN_EXE_lsc")).args(train_args());
        let r = run(c, Duration::from_secs(120));
        assert!(!r.ok, "{}", r.show());
        assert_eq!(r.stderr.matches("built without MPI support").count(), 2, "{}", r.show());
    }
}

#[cfg(feature = "mpi")]
#[test]
fn mpi_training_matches_thread_ranks() {
    if !have_mpirun("mpi_training_matches_thread_ranks") {
        return;
    }
    let mut c = lsc();
    c.args(train_args()).args(["--ranks", "2"]);
    let threads = run(c, Duration::from_secs(300));
    assert!(threads.ok, "{}", threads.show());
    let mut c = mpirun(2);
    c.arg(env!("CARGO_BIN_EXE_lsc")).args(train_args());
    let mpi = run(c, Duration::from_secs(300));
    assert!(mpi.ok, "{}", mpi.show());
    assert!(mpi.stderr.contains("MPI: 2 ranks, one per process"), "{}", mpi.show());
    assert!(mpi.stdout.contains("\"ranks\":2"), "{}", mpi.show());
    // Only rank 0 prints the summary.
    assert_eq!(mpi.stdout.matches("\"epochs\":").count(), 1, "{}", mpi.show());
    assert_same_losses(
        "mpirun -np 2 lsc train vs lsc train --ranks 2 (--limit 256 --batch-size 16 --epochs 2 --seed 7)",
        &threads,
        &mpi,
    );
}

#[cfg(feature = "mpi")]
#[test]
fn mpi_ranks_flag_must_match_the_process_count() {
    if !have_mpirun("mpi_ranks_flag_must_match_the_process_count") {
        return;
    }
    let mut c = mpirun(2);
    c.arg(env!("CARGO_BIN_EXE_lsc"))
        .args(train_args())
        .args(["--ranks", "3"]);
    let r = run(c, Duration::from_secs(120));
    assert!(!r.ok, "{}", r.show());
    assert!(
        r.stderr.contains("--ranks 3, but the MPI launcher started 2 processes"),
        "{}",
        r.show()
    );
}

#[cfg(feature = "mpi")]
#[test]
fn mpi_failing_rank_aborts_the_job() {
    if !have_mpirun("mpi_failing_rank_aborts_the_job") {
        return;
    }
    let cfg = std::env::temp_dir().join(format!("lsc-mpi-bad-{}.toml", std::process::id()));
    std::fs::write(&cfg, "[data]\ntrain = \"/no/such/train\"\n").unwrap();
    let mut c = mpirun(2);
    c.arg(env!("CARGO_BIN_EXE_lsc"))
        .args(["train", "--config", cfg.to_str().unwrap(), "--epochs", "1"])
        .env("LSC_COMM_TIMEOUT_S", "60");
    let r = run(c, Duration::from_secs(120));
    assert!(!r.ok, "{}", r.show());
    assert!(
        r.stderr.contains("training failed: data.train /no/such/train"),
        "{}",
        r.show()
    );
    assert!(r.stderr.contains("aborting the MPI job"), "{}", r.show());
    assert!(r.secs < 30.0, "{}", r.show());
}

/// Two test hosts as network namespaces; removed on drop.
#[cfg(feature = "mpi")]
struct Hosts {
    script: std::path::PathBuf,
    prefix: String,
}

#[cfg(feature = "mpi")]
impl Hosts {
    fn up(script: &Path, prefix: &str) -> Result<Hosts, String> {
        let hosts = Hosts {
            script: script.to_path_buf(),
            prefix: prefix.to_string(),
        };
        let o = Command::new("sh")
            .arg(script)
            .arg("up")
            .env("LSC_NETNS_PREFIX", prefix)
            .output()
            .map_err(|e| format!("sh {}: {e}", script.display()))?;
        if !o.status.success() {
            return Err(format!(
                "`sh {} up` failed: {}",
                script.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Ok(hosts)
    }
}

#[cfg(feature = "mpi")]
impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .arg(&self.script)
            .arg("down")
            .env("LSC_NETNS_PREFIX", &self.prefix)
            .output();
    }
}

#[cfg(feature = "mpi")]
#[test]
fn mpi_two_hosts_in_network_namespaces() {
    const TEST: &str = "mpi_two_hosts_in_network_namespaces";
    if !have_mpirun(TEST) {
        return;
    }
    let dir = root().join("crates/lsc-comm/tests/netns");
    let prefix = format!("l{}", std::process::id() % 100_000);
    let hosts = match Hosts::up(&dir.join("hosts.sh"), &prefix) {
        Ok(h) => h,
        Err(why) => {
            assert!(!required("LSC_REQUIRE_NETNS"), "{TEST}: LSC_REQUIRE_NETNS=1 but {why}");
            eprintln!("SKIPPED (netns) {TEST}: {why}");
            return;
        }
    };
    let (h1, h2) = (format!("{prefix}-h1"), format!("{prefix}-h2"));
    let hostfile = std::env::temp_dir().join(format!("lsc-mpi-hosts-{}", std::process::id()));
    std::fs::write(&hostfile, format!("{h1} slots=1\n{h2} slots=1\n")).unwrap();

    // The recipe of the README: mpirun on the first host, one rank per host, TCP between them.
    let mpirun = || {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &h1,
            "mpirun",
            "--allow-run-as-root",
            "-np",
            "2",
            "--hostfile",
        ])
        .arg(&hostfile)
        .args(["--mca", "plm_rsh_agent"])
        .arg(dir.join("rsh-netns"))
        .args(["--mca", "btl", "tcp,self"])
        .args(["--mca", "btl_tcp_if_include", "10.231.0.0/24"])
        .args(["--mca", "oob_tcp_if_include", "10.231.0.0/24"]);
        c
    };
    let mut c = mpirun();
    c.arg("sh")
        .arg("-c")
        .arg("echo \"rank $OMPI_COMM_WORLD_RANK on $(hostname)\"");
    let where_ = run(c, Duration::from_secs(120));
    assert!(where_.ok, "{}", where_.show());
    for (r, h) in [(0, &h1), (1, &h2)] {
        assert!(where_.stdout.contains(&format!("rank {r} on {h}")), "{}", where_.show());
    }

    let mut c = mpirun();
    c.arg(env!("CARGO_BIN_EXE_lsc")).args(train_args());
    let two_hosts = run(c, Duration::from_secs(300));
    assert!(two_hosts.ok, "{}", two_hosts.show());

    let mut c = lsc();
    c.args(train_args()).args(["--ranks", "2"]);
    let threads = run(c, Duration::from_secs(300));
    assert!(threads.ok, "{}", threads.show());
    drop(hosts);
    assert_same_losses(
        "mpirun across two network-namespace hosts vs lsc train --ranks 2",
        &threads,
        &two_hosts,
    );
}
