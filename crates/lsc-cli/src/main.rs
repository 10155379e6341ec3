//! `lsc`: large-scale classification training from the command line.

mod ckpt; // defines: `lsc ckpt inspect | reshard`
mod data; // defines: `lsc data pack | verify | stats | shuffle-split | make-bin`
mod export; // defines: `lsc export` (a checkpoint as a BN-folded inference model)
mod model; // defines: `lsc model summary | list`
mod train; // defines: `lsc train`

use std::ffi::OsString;

const USAGE: &str = "\
lsc: train classifiers whose last layer is too big for one device

usage: lsc <command> [options]

commands:
  train      train a backbone and a class-sharded margin-softmax head (lsc train --help)
  data       pack, verify, inspect, shuffle and split data sets; make .bin pair sets (lsc data --help)
  ckpt       inspect or re-partition a checkpoint (lsc ckpt --help)
  model      an architecture's shapes, parameters and FLOPs (lsc model --help)
  export     a checkpoint's backbone as a BN-folded inference model (lsc export --help)
  gpu        report the CUDA driver and devices found at run time
";

/// The error and its causes, skipping a cause whose text the message already holds (library
/// errors carry their cause's text in their own message).
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out += ": ";
            }
            out += &text;
        }
    }
    out
}

/// Restores the default SIGPIPE action, so that `lsc data verify … | head` ends quietly like
/// other Unix tools instead of panicking on a closed pipe.
#[cfg(unix)]
fn default_sigpipe() {
    unsafe extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    const SIGPIPE: i32 = 13;
    const SIG_DFL: usize = 0;
    // SAFETY: signal(2) with SIG_DFL is async-signal-safe and installs no Rust code; it runs
    // before any other thread exists.
    unsafe {
        signal(SIGPIPE, SIG_DFL);
    }
}

fn main() {
    #[cfg(unix)]
    default_sigpipe();
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let cmd = if args.is_empty() {
        String::new()
    } else {
        args.remove(0).to_string_lossy().into_owned()
    };
    let res = match cmd.as_str() {
        "train" => train::run(args),
        "data" => data::run(args),
        "ckpt" => ckpt::run(args),
        "model" => model::run(args),
        "export" => export::run(args),
        "gpu" if args.iter().any(|a| a == "-h" || a == "--help") => {
            println!("usage: lsc gpu\n\nReports the CUDA driver and the devices it sees, loaded at run time (dlopen).");
            Ok(())
        }
        "gpu" => gpu(),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        "" => Err(anyhow::anyhow!("missing command\n\n{USAGE}")),
        other => Err(anyhow::anyhow!("unknown command `{other}`\n\n{USAGE}")),
    };
    if let Err(e) = res {
        eprintln!("error: {}", message(&e));
        std::process::exit(1);
    }
}

fn gpu() -> anyhow::Result<()> {
    match lsc_tensor::device::probe_cuda() {
        Ok(info) => {
            println!(
                "CUDA driver {} ({}), {} device(s):",
                info.driver_version,
                info.library,
                info.devices.len()
            );
            for (i, d) in info.devices.iter().enumerate() {
                println!("  {i}: {d}");
            }
            Ok(())
        }
        Err(why) => Err(anyhow::anyhow!("no GPU: {why}")),
    }
}
