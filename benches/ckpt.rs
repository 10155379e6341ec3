//! `cargo xtask bench-ckpt`: saving and loading a large class-sharded head through the real
//! checkpoint path (`lsc_train::checkpoint::save` / `load`: streamed safetensors with checksums,
//! fsync, atomic rename; on load, every checksum verified and the shard streamed from a memory
//! map into the head's store), against a plain copy of the same bytes (`std::fs::copy` of the
//! head file, then fsync) and a plain write of the head's bytes from memory (`write_all`, then
//! fsync), both timed in the same run. Medians over `--reps`; ends with one JSON line.

use lsc_benches::{Flags, JsonLine, args_or_exit, median_secs, peak_rss_mb};
use lsc_comm::LocalComm;
use lsc_head::MarginSoftmax;
use lsc_nn::IResNet;
use lsc_optim::Sgd;
use lsc_train::Config;
use lsc_train::checkpoint::{self, Position};
use std::path::PathBuf;

const USAGE: &str = "usage: bench-ckpt [--classes C] [--dim D] [--dtype f32|bf16] [--reps N] [--dir DIR]";

struct Args {
    classes: usize,
    dim: usize,
    dtype: String,
    reps: usize,
    dir: PathBuf,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        classes: 1_000_000,
        dim: 512,
        dtype: "f32".into(),
        reps: 3,
        dir: std::env::temp_dir().join(format!("lsc-bench-ckpt-{}", std::process::id())),
    };
    let mut f = Flags::from_env(USAGE);
    while let Some(flag) = f.next() {
        match flag.as_str() {
            "--classes" => a.classes = f.value()?,
            "--dim" => a.dim = f.value()?,
            "--reps" => a.reps = f.value::<usize>()?.max(1),
            "--dtype" => a.dtype = f.string()?,
            "--dir" => a.dir = f.string()?.into(),
            _ => return Err(f.unknown()),
        }
    }
    Ok(a)
}

fn main() {
    let a = args_or_exit(parse());
    let mut cfg = Config::from_str_with_defaults(
        "bench-ckpt",
        &format!(
            "[data]\nnum_classes = {}\n[model]\nemb_dim = {}\n[head]\ndtype = \"{}\"\n[train]\nkeep_last = 1\n",
            a.classes, a.dim, a.dtype
        ),
    )
    .unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let _ = std::fs::remove_dir_all(&a.dir);
    cfg.train.checkpoint_dir = a.dir.join("ckpt");
    let comm = LocalComm;
    let mut net = IResNet::new(&cfg.model, 0).expect("model");
    let mut opt = Sgd::new(cfg.optim.momentum, cfg.optim.weight_decay);
    let mut head = MarginSoftmax::new(&cfg.head, a.classes, a.dim, &comm, 1);
    println!(
        "head: {} classes x {} dims, {} weights + momentum = {:.1} MB",
        a.classes,
        a.dim,
        a.dtype,
        head.state_bytes() as f64 / 1e6
    );
    let mut step = 0u64;
    let mut saved = PathBuf::new();
    let save_s = median_secs(0, a.reps, || {
        step += 1;
        let pos = Position {
            step,
            ..Position::default()
        };
        saved = checkpoint::save(&cfg, &comm, &mut net, &opt, &head, &pos)
            .expect("save")
            .expect("rank 0 commits");
    });
    let (_, m) = lsc_ckpt::load_manifest(&saved, false).expect("manifest");
    let bytes: u64 = m.files.iter().map(|f| f.bytes).sum();
    let head_file = saved.join(&m.shards[0].file);
    let head_bytes = std::fs::metadata(&head_file).expect("head file").len();
    cfg.train.resume = saved.clone();
    let load_s = median_secs(0, a.reps, || {
        checkpoint::load(&cfg, &comm, &mut net, &mut opt, &mut head).expect("load");
    });
    let copy = a.dir.join("copy.bin");
    let copy_s = median_secs(0, a.reps, || {
        let _ = std::fs::remove_file(&copy);
        std::fs::copy(&head_file, &copy).expect("copy");
        std::fs::File::open(&copy).and_then(|f| f.sync_all()).expect("fsync");
    });
    let raw = a.dir.join("write.bin");
    let write_s = median_secs(0, a.reps, || {
        use std::io::Write;
        let mut f = std::fs::File::create(&raw).expect("create");
        for r in [head.weight_rows(), head.momentum_rows()] {
            let bytes: &[u8] = match (r.as_f32(), r.as_bf16_bits()) {
                // SAFETY: plain numbers with no padding, viewed as bytes for this write only.
                (Some(v), _) => unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 4) },
                // SAFETY: as above.
                (_, Some(v)) => unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 2) },
                _ => &[],
            };
            f.write_all(bytes).expect("write");
        }
        f.sync_all().expect("fsync");
    });
    let write_bytes = std::fs::metadata(&raw).expect("write.bin").len();
    let mb = |b: u64, s: f64| b as f64 / 1e6 / s;
    let (save_mb, load_mb, copy_mb) = (mb(bytes, save_s), mb(bytes, load_s), mb(head_bytes, copy_s));
    println!(
        "{:<6} {:>10} {:>9} {:>9} {:>12}",
        "op", "MB", "median s", "MB/s", "vs copy"
    );
    println!(
        "{:<6} {:>10.1} {:>9.3} {:>9.1} {:>12.2}",
        "save",
        bytes as f64 / 1e6,
        save_s,
        save_mb,
        save_mb / copy_mb
    );
    println!(
        "{:<6} {:>10.1} {:>9.3} {:>9.1} {:>12.2}",
        "load",
        bytes as f64 / 1e6,
        load_s,
        load_mb,
        load_mb / copy_mb
    );
    println!(
        "{:<6} {:>10.1} {:>9.3} {:>9.1} {:>12.2}",
        "copy",
        head_bytes as f64 / 1e6,
        copy_s,
        copy_mb,
        1.0
    );
    let write_mb = mb(write_bytes, write_s);
    println!(
        "{:<6} {:>10.1} {:>9.3} {:>9.1} {:>12.2}",
        "write",
        write_bytes as f64 / 1e6,
        write_s,
        write_mb,
        write_mb / copy_mb
    );
    let mut j = JsonLine::default();
    j.num("classes", a.classes as f64);
    j.num("dim", a.dim as f64);
    j.str("dtype", &a.dtype);
    j.num("checkpoint_mb", bytes as f64 / 1e6);
    j.num("save_mb_s", save_mb);
    j.num("load_mb_s", load_mb);
    j.num("copy_mb_s", copy_mb);
    j.num("write_mb_s", write_mb);
    j.num("save_vs_copy", save_mb / copy_mb);
    j.num("save_vs_write", save_mb / write_mb);
    j.num("load_vs_copy", load_mb / copy_mb);
    j.num("peak_rss_mb", peak_rss_mb());
    let _ = std::fs::remove_dir_all(&a.dir);
    println!("{}", j.finish());
}
