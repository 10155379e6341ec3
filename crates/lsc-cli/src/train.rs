//! `lsc train`: load the config, apply flags, train, print the summary JSON line.
//!
//! Started by `mpirun` (or another MPI launcher, seen in the environment), each process is one
//! rank over MPI when built with `--features mpi`; rank 0 prints progress and the summary.

use anyhow::{Context, Result, bail};
use lexopt::prelude::*;
use lsc_train::Config;
use std::ffi::OsString;
use std::path::PathBuf;

const USAGE: &str = "\
usage: lsc train [--config FILE] [--epochs N] [--data DIR] [--ranks N] [--limit N]
                 [--batch-size N] [--seed N] [--checkpoint-dir DIR] [--resume DIR] [--max-steps N]
                 [--quiet] [--print-config] [--profile]

  --config FILE    TOML config; overrides the built-in defaults key by key
  --epochs N       train.epochs
  --data DIR       a directory with train/ and test/ shard sets (as `lsc data pack` writes)
  --ranks N        train.ranks: ranks as threads (data-parallel backbone, class-sharded head)
  --limit N        data.limit: use only the first N training records
  --batch-size N   data.batch_size (per rank)
  --seed N         seed
  --checkpoint-dir DIR  train.checkpoint_dir: save checkpoints there (every epoch by default)
  --resume DIR     train.resume: continue from a checkpoint, or from the newest one under DIR
  --max-steps N    train.max_steps: stop (and save, with a checkpoint dir) after N global steps
  --quiet          no progress output; only the final JSON line
  --print-config   print the resolved config and exit
  --profile        time each layer type and print the table (seconds, share, GFLOP/s) at the end

Progress goes to stderr; the last line on stdout is a JSON summary.

Under mpirun (lsc built with --features mpi) every process is one rank: the world size comes
from mpirun -np, --ranks may be left out, and rank 0 prints progress and the summary.
LSC_COMM_TIMEOUT_S (default 600) bounds every wait for the other ranks.
";

fn parse<T: std::str::FromStr>(flag: &str, v: OsString) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let s = v.to_string_lossy();
    s.parse().map_err(|e| anyhow::anyhow!("--{flag} {s}: {e}"))
}

pub fn run(args: Vec<OsString>) -> Result<()> {
    let mut p = lexopt::Parser::from_args(args);
    let (mut config, mut epochs, mut data, mut ranks, mut limit, mut bs, mut seed) =
        (None, None, None, None, None, None, None);
    let (mut quiet, mut print, mut prof) = (false, false, false);
    let (mut ckpt, mut resume, mut max_steps) = (None, None, None);
    while let Some(arg) = p.next()? {
        match arg {
            Long("config") => config = Some(PathBuf::from(p.value()?)),
            Long("epochs") => epochs = Some(parse::<usize>("epochs", p.value()?)?),
            Long("data") => data = Some(PathBuf::from(p.value()?)),
            Long("ranks") => ranks = Some(parse::<usize>("ranks", p.value()?)?),
            Long("limit") => limit = Some(parse::<usize>("limit", p.value()?)?),
            Long("batch-size") => bs = Some(parse::<usize>("batch-size", p.value()?)?),
            Long("seed") => seed = Some(parse::<u64>("seed", p.value()?)?),
            Long("checkpoint-dir") => ckpt = Some(PathBuf::from(p.value()?)),
            Long("resume") => resume = Some(PathBuf::from(p.value()?)),
            Long("max-steps") => max_steps = Some(parse::<usize>("max-steps", p.value()?)?),
            Long("quiet") => quiet = true,
            Long("print-config") => print = true,
            Long("profile") => prof = true,
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(());
            }
            other => bail!("{}\n\n{USAGE}", other.unexpected()),
        }
    }
    let mut cfg = match &config {
        Some(path) => Config::load(path)?,
        None => Config::defaults(),
    };
    if let Some(dir) = data {
        if !dir.is_dir() {
            bail!("--data {}: not a directory", dir.display());
        }
        cfg.data.train = dir.join("train");
        let test = dir.join("test");
        cfg.data.test = if test.exists() {
            test
        } else {
            eprintln!(
                "note: --data {}: no test/ shard set inside, so no evaluation",
                dir.display()
            );
            PathBuf::new()
        };
        if !cfg.data.train.exists() {
            bail!(
                "--data {}: no train/ shard set inside (expected {})",
                dir.display(),
                cfg.data.train.display()
            );
        }
    }
    if let Some(v) = epochs {
        cfg.train.epochs = v;
    }
    if let Some(v) = ranks {
        cfg.train.ranks = v;
    }
    if let Some(v) = limit {
        cfg.data.limit = v;
    }
    if let Some(v) = bs {
        cfg.data.batch_size = v;
    }
    if let Some(v) = seed {
        cfg.seed = v;
    }
    if let Some(v) = ckpt {
        cfg.train.checkpoint_dir = v;
    }
    if let Some(v) = resume {
        cfg.train.resume = v;
    }
    if let Some(v) = max_steps {
        cfg.train.max_steps = v;
    }
    // One process under a launcher (`mpirun -np 1`) is a plain run (thread ranks allowed).
    let launch = lsc_comm::launched_by(|k| std::env::var(k).ok()).filter(|l| l.world_size > 1);
    if let Some(l) = &launch {
        check_mpi_ranks(l, ranks, &cfg)?;
        cfg.train.ranks = l.world_size;
    }
    let origin = match &config {
        Some(p) => format!("config {} with the command-line flags", p.display()),
        None => "the built-in defaults with the command-line flags".to_string(),
    };
    cfg.validate().with_context(|| origin.clone())?;
    if print {
        if launch.as_ref().is_none_or(|l| l.rank.unwrap_or(0) == 0) {
            print!("{}", cfg.to_toml());
        }
        return Ok(());
    }
    lsc_nn::profile::enable(prof);
    let summary = match &launch {
        Some(l) => match train_mpi(&cfg, quiet, l)? {
            Some(s) => s,
            None => return Ok(()), // not rank 0: rank 0 prints the summary
        },
        None => lsc_train::train(&cfg, quiet).context("training failed")?,
    };
    if prof {
        eprint!("{}", lsc_nn::profile::report());
    }
    println!("{}", summary.to_json());
    Ok(())
}

/// Under an MPI launcher the world size is the number of processes: `--ranks` (or
/// `train.ranks` in a config) may only repeat it.
fn check_mpi_ranks(l: &lsc_comm::Launch, flag: Option<usize>, cfg: &Config) -> Result<()> {
    let n = l.world_size;
    match flag {
        Some(r) if r != n => bail!(
            "--ranks {r}, but the MPI launcher started {n} processes ({}={n}); under mpirun every process is \
             one rank: leave --ranks out or start {r} processes (mpirun -np {r})",
            l.variable
        ),
        None if cfg.train.ranks != 1 && cfg.train.ranks != n => bail!(
            "train.ranks = {} in the config, but the MPI launcher started {n} processes ({}={n}); under mpirun \
             every process is one rank",
            cfg.train.ranks,
            l.variable
        ),
        _ => Ok(()),
    }
}

/// Trains this process's rank of an MPI job; `Some(summary)` on rank 0. A rank that fails
/// aborts the whole job (so that the others do not wait for it until their timeout).
#[cfg(feature = "mpi")]
fn train_mpi(cfg: &Config, quiet: bool, _launch: &lsc_comm::Launch) -> Result<Option<lsc_train::Summary>> {
    use lsc_comm::Communicator;
    let comm = lsc_comm::mpi::MpiComm::init().map_err(|e| anyhow::anyhow!("MPI: {e}"))?;
    if comm.rank() == 0 && !quiet {
        eprintln!(
            "MPI: {} ranks, one per process ({}); collective timeout {:.0} s",
            comm.world_size(),
            lsc_comm::mpi::MpiComm::library_version()
                .lines()
                .next()
                .unwrap_or("")
                .trim(),
            comm.timeout().as_secs_f64()
        );
    }
    match lsc_train::train_on(cfg, quiet, &lsc_train::default_backbone, &comm) {
        Ok(s) => Ok((comm.rank() == 0).then_some(s)),
        Err(e) => comm.abort(1, &format!("training failed: {e}")),
    }
}

/// Without the `mpi` feature, an MPI job of more than one process cannot run: each process
/// would train alone on the whole data.
#[cfg(not(feature = "mpi"))]
fn train_mpi(_cfg: &Config, _quiet: bool, l: &lsc_comm::Launch) -> Result<Option<lsc_train::Summary>> {
    bail!(
        "started by an MPI launcher as one of {} processes ({}={}), but this lsc was built without MPI \
         support; rebuild it with `cargo build --release -p lsc-cli --features mpi` (needs Open MPI or MPICH \
         and libclang: apt-get install openmpi-bin libopenmpi-dev libclang-dev), or run one process with \
         --ranks N for N thread ranks",
        l.world_size,
        l.variable,
        l.world_size
    )
}
