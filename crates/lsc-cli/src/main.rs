//! `lsc`: large-scale classification training from the command line.

mod data; // defines: `lsc data pack | verify`
mod train; // defines: `lsc train`

use std::ffi::OsString;

const USAGE: &str = "\
lsc: train classifiers whose last layer is too big for one device

usage: lsc <command> [options]

commands:
  train      train a backbone and a class-sharded margin-softmax head (lsc train --help)
  data       pack, verify base64 image shards (lsc data --help)
  gpu        report the CUDA driver and devices found at run time
";

fn main() {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let cmd = if args.is_empty() {
        String::new()
    } else {
        args.remove(0).to_string_lossy().into_owned()
    };
    let res = match cmd.as_str() {
        "train" => train::run(args),
        "data" => data::run(args),
        "gpu" => gpu(),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        "" => Err(anyhow::anyhow!("missing command\n\n{USAGE}")),
        other => Err(anyhow::anyhow!("unknown command `{other}`\n\n{USAGE}")),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
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
