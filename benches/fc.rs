//! `cargo xtask bench-fc`: the class-sharded margin-softmax head's fused step (forward,
//! backward and SGD update) on random data, against this machine's plain GEMM rate on the same
//! shapes measured in the same run. Prints one line per step and a final JSON line.

use lsc_benches::{Flags, JsonLine, median, median_secs, peak_rss_mb};
use lsc_comm::{Communicator, LocalComm, run_ranks};
use lsc_head::{DType, HeadConfig, LossKind, MarginSoftmax, Update};
use lsc_tensor::cpu::{Par, Trans, matmul};
use lsc_tensor::{Rng, Tensor};
use std::time::Instant;

const USAGE: &str = "usage: bench-fc [--classes C] [--batch B] [--dim D] [--ranks N] [--dtype f32|bf16]
                [--sample-rate R] [--steps S] [--loss arcface|cosface|softmax|combined] [--tile T]";

struct Args {
    classes: usize,
    batch: usize,
    dim: usize,
    ranks: usize,
    dtype: DType,
    sample_rate: f32,
    steps: usize,
    loss: LossKind,
    tile: usize,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        classes: 100_000,
        batch: 128,
        dim: 512,
        ranks: 1,
        dtype: DType::F32,
        sample_rate: 1.0,
        steps: 3,
        loss: LossKind::ArcFace,
        tile: HeadConfig::new(LossKind::ArcFace).tile,
    };
    let mut f = Flags::from_env(USAGE);
    while let Some(flag) = f.next() {
        match flag.as_str() {
            // Counts accept `1e6`.
            "--classes" => a.classes = f.value::<f64>()? as usize,
            "--batch" => a.batch = f.value::<f64>()? as usize,
            "--dim" => a.dim = f.value::<f64>()? as usize,
            "--ranks" => a.ranks = f.value::<f64>()? as usize,
            "--steps" => a.steps = f.value::<f64>()? as usize,
            "--tile" => a.tile = f.value::<f64>()? as usize,
            "--sample-rate" => a.sample_rate = f.value()?,
            "--dtype" => {
                a.dtype = match f.string()?.as_str() {
                    "f32" => DType::F32,
                    "bf16" => DType::Bf16,
                    o => return Err(format!("--dtype {o}: expected f32 or bf16")),
                }
            }
            "--loss" => {
                a.loss = match f.string()?.as_str() {
                    "arcface" => LossKind::ArcFace,
                    "cosface" => LossKind::CosFace,
                    "softmax" => LossKind::Softmax,
                    "combined" => LossKind::Combined,
                    o => return Err(format!("--loss {o}: expected arcface, cosface, softmax or combined")),
                }
            }
            _ => return Err(f.unknown()),
        }
    }
    if a.classes == 0 || a.batch == 0 || a.dim == 0 || a.ranks == 0 || a.steps == 0 || a.tile == 0 {
        return Err(format!(
            "--classes, --batch, --dim, --ranks, --steps and --tile must be positive\n{USAGE}"
        ));
    }
    if !a.batch.is_multiple_of(a.ranks) {
        return Err(format!("--batch {} must divide by --ranks {}", a.batch, a.ranks));
    }
    Ok(a)
}

/// The plain GEMMs on a block of the head's shapes: logits, dX = G·W and dW = Gᵀ·X, one
/// rayon-parallel product each (6·B·C·D FLOPs in all), on buffers allocated once.
struct Plain {
    b: usize,
    d: usize,
    c: usize,
    x: Vec<f32>,
    xt: Vec<f32>,
    w: Vec<f32>,
    z: Vec<f32>,
    dx: Vec<f32>,
    dw: Vec<f32>,
}

impl Plain {
    fn new(b: usize, d: usize, c: usize) -> Plain {
        let mut rng = Rng::new(1);
        let mut randn = |n: usize| (0..n).map(|_| rng.normal()).collect::<Vec<f32>>();
        Plain {
            b,
            d,
            c,
            x: randn(b * d),
            xt: randn(b * d),
            w: randn(c * d),
            z: vec![0.0; b * c],
            dx: vec![0.0; b * d],
            dw: vec![0.0; c * d],
        }
    }

    /// GFLOP/s of the three products in the two layouts a plain implementation could use:
    /// (batch-major logits `Z = X·Wᵀ` `[B, C]`, as `F.linear` computes them; class-major
    /// `Zᵀ = W·Xᵀ` `[C, B]` with `Xᵀ` stored, as the fused kernel uses).
    fn gflops(&mut self) -> (f64, f64) {
        let (b, d, c) = (self.b, self.d, self.c);
        let Plain {
            x, xt, w, z, dx, dw, ..
        } = self;
        let batch_major = median_secs(1, 3, || {
            matmul(Trans::N, Trans::T, b, c, d, x, w, z, false, Par::Rayon);
            matmul(Trans::N, Trans::N, b, d, c, z, w, dx, false, Par::Rayon);
            matmul(Trans::T, Trans::N, c, d, b, z, x, dw, false, Par::Rayon);
        });
        let class_major = median_secs(1, 3, || {
            matmul(Trans::N, Trans::N, c, b, d, w, xt, z, false, Par::Rayon);
            matmul(Trans::T, Trans::N, b, d, c, z, w, dx, false, Par::Rayon);
            matmul(Trans::N, Trans::N, c, d, b, z, x, dw, false, Par::Rayon);
        });
        let rate = |s: f64| 6.0 * (b * c * d) as f64 / s / 1e9;
        (rate(batch_major), rate(class_major))
    }
}

/// Classes in the plain-GEMM block: enough for full-speed products, small enough that its
/// buffers (about 70 MB at D = 512) add little to the peak RSS of the steps.
const PLAIN_BLOCK: usize = 16_384;

/// The rate of the fused kernel's own products: the four per-tile GEMMs of a step (class-major
/// logits twice, dX, dW on `tile` classes), single-threaded, run on every pool thread at once.
/// This is the most the fused step could reach if nothing but its GEMMs took time.
fn tile_gemm_gflops(b: usize, d: usize, tile: usize) -> f64 {
    let threads = rayon::current_num_threads();
    let reps = (64 * 1024 / tile.max(1)).max(8);
    let secs: Vec<f64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut rng = Rng::new(10 + t as u64);
                    let used: Vec<f32> = (0..tile * d).map(|_| rng.normal()).collect();
                    let x: Vec<f32> = (0..b * d).map(|_| rng.normal()).collect();
                    let mut z = vec![0.0f32; tile * b];
                    let mut dx = vec![0.0f32; b * d];
                    let mut du = vec![0.0f32; tile * d];
                    median_secs(1, 3, || {
                        for _ in 0..reps {
                            for _ in 0..2 {
                                matmul(Trans::N, Trans::N, tile, b, d, &used, &x, &mut z, false, Par::Seq);
                            }
                            matmul(Trans::T, Trans::N, b, d, tile, &z, &used, &mut dx, true, Par::Seq);
                            matmul(Trans::N, Trans::N, tile, d, b, &z, &x, &mut du, false, Par::Seq);
                        }
                    })
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("tile GEMM thread")).collect()
    });
    let per = secs.iter().sum::<f64>() / secs.len() as f64;
    threads as f64 * reps as f64 * 8.0 * (b * tile * d) as f64 / per / 1e9
}

/// What one rank measured: step seconds, the plain GEMM rates (batch-major, class-major)
/// measured just before each step (rank 0 only), rows computed per step, head state bytes.
struct RankRun {
    times: Vec<f64>,
    plain: Vec<(f64, f64)>,
    rows: usize,
    state: usize,
}

/// Runs the steps on one rank. Before each step rank 0 times the plain GEMMs (the other
/// ranks wait in the step's first collective, asleep), so that every step is paired with a
/// plain rate measured under the same machine load.
fn run_rank(a: &Args, comm: &dyn Communicator) -> RankRun {
    let mut cfg = HeadConfig::new(a.loss);
    cfg.dtype = a.dtype;
    cfg.sample_rate = a.sample_rate;
    cfg.tile = a.tile;
    let t = Instant::now();
    let mut head = MarginSoftmax::new(&cfg, a.classes, a.dim, comm, 0);
    if comm.rank() == 0 {
        eprintln!(
            "init: {} classes x {} on {} rank(s), {:.1} s",
            a.classes,
            a.dim,
            comm.world_size(),
            t.elapsed().as_secs_f64()
        );
    }
    let b = a.batch / comm.world_size();
    let upd = Update {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 5e-4,
    };
    let mut plain = (comm.rank() == 0).then(|| Plain::new(a.batch, a.dim, a.classes.clamp(1, PLAIN_BLOCK)));
    let mut plain_rates = Vec::new();
    let mut times = Vec::new();
    let mut rows = 0;
    for step in 0..a.steps {
        if let Some(p) = plain.as_mut() {
            plain_rates.push(p.gflops());
        }
        let mut rng = Rng::stream(7 + step as u64, comm.rank() as u64);
        let emb = Tensor::randn(&[b, a.dim], 1.0, &mut rng);
        let labels: Vec<u32> = (0..b).map(|_| rng.below(a.classes as u64) as u32).collect();
        let t = Instant::now();
        let s = head.step(&emb, &labels, comm, &upd).expect("head step");
        let secs = t.elapsed().as_secs_f64();
        let mut r = [s.rows as f32];
        comm.all_reduce(&mut r, lsc_comm::ReduceOp::Sum).expect("all-reduce");
        rows = r[0] as usize;
        if comm.rank() == 0 {
            let gf = 6.0 * (a.batch * rows * a.dim) as f64 / secs / 1e9;
            println!(
                "step {} loss {:.4} {:.3} s {:.1} samples/s {:.1} GFLOP/s",
                step + 1,
                s.loss,
                secs,
                a.batch as f64 / secs,
                gf
            );
        }
        times.push(secs);
    }
    RankRun {
        times,
        plain: plain_rates,
        rows,
        state: head.state_bytes(),
    }
}

fn main() {
    let a = lsc_benches::args_or_exit(parse());
    let results = if a.ranks == 1 {
        vec![run_rank(&a, &LocalComm)]
    } else {
        run_ranks(a.ranks, |c| run_rank(&a, &c))
    };
    let r0 = &results[0];
    let rows = r0.rows;
    let state: usize = results.iter().map(|r| r.state).sum();
    let med = median(&r0.times);
    let flops = 6.0 * (a.batch * rows * a.dim) as f64;
    let gflops = flops / med / 1e9;
    // Each step against the plain rate measured just before it, in the faster layout (the
    // conservative choice); the median of those ratios. The batch-major figures are beside it.
    let ratios = |pick: &dyn Fn(&(f64, f64)) -> f64| {
        let f: Vec<f64> = r0
            .times
            .iter()
            .zip(&r0.plain)
            .map(|(t, p)| flops / t / 1e9 / pick(p))
            .collect();
        median(&f)
    };
    let fraction = ratios(&|p| p.0.max(p.1));
    let fraction_bm = ratios(&|p| p.0);
    let plain = median(&r0.plain.iter().map(|p| p.0.max(p.1)).collect::<Vec<_>>());
    let plain_bm = median(&r0.plain.iter().map(|p| p.0).collect::<Vec<_>>());
    let tile_rate = tile_gemm_gflops(a.batch, a.dim, a.tile);
    println!(
        "plain GEMM on [{}x{}]x[{}x{}] (three products, before each step): median {:.1} GFLOP/s",
        a.batch,
        a.dim,
        a.dim,
        a.classes.clamp(1, PLAIN_BLOCK),
        plain
    );
    let mut j = JsonLine::default();
    j.str("bench", "fc");
    j.num("classes", a.classes as f64);
    j.num("classes_computed", rows as f64);
    j.num("batch", a.batch as f64);
    j.num("dim", a.dim as f64);
    j.num("ranks", a.ranks as f64);
    j.str("dtype", if a.dtype == DType::Bf16 { "bf16" } else { "f32" });
    j.num("sample_rate", a.sample_rate as f64);
    j.str("loss", &format!("{:?}", a.loss).to_lowercase());
    j.num("steps", a.steps as f64);
    j.num("step_s_median", med);
    j.num("samples_per_s", a.batch as f64 / med);
    j.num("gflops", gflops);
    j.num("plain_gemm_gflops", plain);
    j.num("plain_block_classes", a.classes.clamp(1, PLAIN_BLOCK) as f64);
    j.num("gemm_fraction", fraction);
    j.num("plain_batch_major_gflops", plain_bm);
    j.num("gemm_fraction_batch_major", fraction_bm);
    // The fused step runs four GEMMs, not three: pass 2 recomputes the logits because the
    // [B, C] logits are never stored. gemm_efficiency counts the 8·B·C·D it executes against
    // the plain rate; tile_efficiency against its own per-thread tile products (its ceiling).
    j.num("gemm_efficiency", fraction * 8.0 / 6.0);
    j.num("tile_gemm_gflops", tile_rate);
    j.num("tile_efficiency", gflops * 8.0 / 6.0 / tile_rate);
    j.num("head_state_mb", state as f64 / 1048576.0);
    j.num("peak_rss_mb", peak_rss_mb());
    println!("{}", j.finish());
}
