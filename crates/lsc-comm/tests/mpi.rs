//! `MpiComm` under `mpirun` (built with `--features mpi`; no libtest harness).
//!
//! Run by `cargo test` as a plain binary, it is the driver: it starts itself under
//! `mpirun --oversubscribe -np N` for N = 1 … 4 with `LSC_MPI_CASE=conformance`, where every
//! process runs the whole conformance suite (`suite/mod.rs`) on an `MpiComm`, then runs the
//! failure cases: a rank that sleeps past the others' deadline (the waiting rank must abort the
//! job naming itself and the collective, within the timeout), a rank that finalises MPI and
//! leaves early (the same), and a rank that dies without finalising (mpirun must end the job).
//!
//! Without `mpirun` on PATH it prints a SKIPPED line, or fails when `LSC_REQUIRE_MPI=1`.

mod suite;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lsc_comm::mpi::MpiComm;
use lsc_comm::{Communicator, ReduceOp};
use suite::Order;

const CASE_ENV: &str = "LSC_MPI_CASE";

fn main() {
    match std::env::var(CASE_ENV) {
        Ok(case) => rank_main(&case),
        Err(_) => driver(),
    }
}

// ---- inside mpirun: one rank ----

fn rank_main(case: &str) {
    let comm = MpiComm::init().unwrap_or_else(|e| panic!("MpiComm::init: {e}"));
    let (r, n) = (comm.rank(), comm.world_size());
    match case {
        "conformance" => {
            let t = Instant::now();
            // Sums over more than two ranks follow MPI's order; two ranks sum a + b exactly.
            let order = if n <= 2 { Order::RankOrder } else { Order::Any };
            suite::run_all(&comm, order);
            println!(
                "conformance ok: rank {r} of {n} ({} s, {order:?})",
                format_args!("{:.2}", t.elapsed().as_secs_f64())
            );
        }
        "sleep" => {
            // Rank 1 arrives 30 s late; rank 0 must give up at its deadline (LSC_COMM_TIMEOUT_S).
            if r == 1 {
                std::thread::sleep(Duration::from_secs(30));
            }
            let mut buf = [1.0f32; 4];
            comm.all_reduce(&mut buf, ReduceOp::Sum).unwrap();
            println!("rank {r}: all_reduce returned (unexpected)");
        }
        "leave" => {
            // Rank 1 finalises MPI and exits cleanly before the collective the others wait in.
            if r == 1 {
                drop(comm);
                return;
            }
            comm.barrier().unwrap();
            println!("rank {r}: barrier returned (unexpected)");
        }
        "crash" => {
            // Rank 1 dies without finalising.
            if r == 1 {
                std::process::exit(3);
            }
            let mut buf = vec![0.0f32; 1 << 10];
            comm.all_gather(&[1.0; 512], &mut buf).unwrap();
            println!("rank {r}: all_gather returned (unexpected)");
        }
        other => panic!("{CASE_ENV}={other}: unknown case"),
    }
}

// ---- the driver ----

struct Outcome {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    secs: f64,
}

/// Runs `mpirun -np n <this binary>` with `case`, killing it after `limit`.
fn mpirun(n: usize, case: &str, env: &[(&str, &str)], limit: Duration) -> Outcome {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-np", &n.to_string()])
        .arg(exe)
        .env(CASE_ENV, case)
        .env("OMPI_MCA_mpi_yield_when_idle", "1")
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let t = Instant::now();
    let mut child = cmd.spawn().expect("spawn mpirun");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let so = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).ok();
        s
    });
    let se = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).ok();
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for mpirun") {
            break Some(s);
        }
        if t.elapsed() > limit {
            child.kill().ok();
            child.wait().ok();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        ok: status.is_some_and(|s| s.success()),
        code: status.and_then(|s| s.code()),
        stdout: so.join().unwrap(),
        stderr: se.join().unwrap(),
        secs: t.elapsed().as_secs_f64(),
    }
}

fn show(what: &str, o: &Outcome) -> String {
    format!(
        "{what}: exit {:?} after {:.1} s\n--- stdout ---\n{}--- stderr ---\n{}",
        o.code, o.secs, o.stdout, o.stderr
    )
}

fn driver() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("mpi_collectives: test");
        return;
    }
    // A name filter (`cargo test NAME`) that does not select this binary's one test.
    if let Some(f) = args.iter().find(|a| !a.starts_with('-'))
        && !"mpi_collectives".contains(f.as_str())
    {
        println!("mpi_collectives: filtered out by {f:?}");
        return;
    }
    let required = std::env::var("LSC_REQUIRE_MPI").is_ok_and(|v| v == "1");
    let found = Command::new("mpirun")
        .arg("--version")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output();
    let version = match found {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string(),
        other => {
            let why = match other {
                Ok(o) => format!("mpirun --version failed: {}", String::from_utf8_lossy(&o.stderr).trim()),
                Err(e) => format!("mpirun not found: {e}"),
            };
            if required {
                panic!("LSC_REQUIRE_MPI=1 but {why} (Debian: apt-get install openmpi-bin libopenmpi-dev)");
            }
            println!("SKIPPED (mpi) mpi_collectives: {why}");
            return;
        }
    };
    println!("mpi_collectives: {version}");

    for n in 1..=4 {
        let o = mpirun(n, "conformance", &[], Duration::from_secs(300));
        assert!(o.ok, "{}", show(&format!("conformance on {n} ranks"), &o));
        let ok = o.stdout.lines().filter(|l| l.starts_with("conformance ok")).count();
        assert_eq!(ok, n, "{}", show(&format!("conformance on {n} ranks"), &o));
        println!(
            "mpi_collectives: conformance suite on {n} MPI ranks passed in {:.1} s",
            o.secs
        );
        for l in o.stdout.lines() {
            println!("  {l}");
        }
    }

    // A rank that arrives 30 s late: the other aborts the job at its 2 s deadline.
    let timeout = [("LSC_COMM_TIMEOUT_S", "2")];
    let o = mpirun(2, "sleep", &timeout, Duration::from_secs(60));
    let what = show("a rank sleeping past the deadline", &o);
    assert!(!o.ok, "{what}");
    assert!(
        o.stderr
            .contains("lsc: rank 0 of 2: all_reduce: timed out after 2.0 s waiting for the other ranks"),
        "{what}"
    );
    assert!(o.stderr.contains("aborting the MPI job"), "{what}");
    assert!(o.secs < 20.0, "{what}");
    println!(
        "mpi_collectives: a late rank makes rank 0 abort the job after {:.1} s",
        o.secs
    );

    // A rank that finalises and leaves before the barrier: the other aborts at its deadline.
    let o = mpirun(2, "leave", &timeout, Duration::from_secs(60));
    let what = show("a rank leaving early", &o);
    assert!(!o.ok, "{what}");
    assert!(
        o.stderr.contains("lsc: rank 0 of 2: barrier: timed out after 2.0 s"),
        "{what}"
    );
    assert!(o.secs < 20.0, "{what}");
    println!(
        "mpi_collectives: a rank that left makes rank 0 abort the job after {:.1} s",
        o.secs
    );

    // A rank that dies without finalising: mpirun ends the job, well within the timeout.
    let o = mpirun(3, "crash", &[("LSC_COMM_TIMEOUT_S", "30")], Duration::from_secs(60));
    let what = show("a rank dying", &o);
    assert!(!o.ok, "{what}");
    assert!(!o.stdout.contains("unexpected"), "{what}");
    assert!(o.secs < 30.0, "{what}");
    println!(
        "mpi_collectives: a dying rank ends the job after {:.1} s (mpirun exit {:?})",
        o.secs, o.code
    );
    println!("mpi_collectives: ok");
}
