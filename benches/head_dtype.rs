//! `cargo xtask bench-head-dtype`: does bf16 weight storage (stochastic rounding on writes)
//! learn as well as f32? Synthetic task with many classes: class k has a fixed random unit
//! centre c_k, a sample of class y is `c_y + noise·g` with g ~ N(0, I/dim), and the head (no
//! backbone) must learn to separate them. The f32 and the bf16 head start from the same seed
//! (equal up to bf16 rounding) and see the same batches; the bench prints both loss curves,
//! the top-1 of both on a fixed held-out set at 25/50/75/100% of the run, the time per step,
//! and two rounding controls:
//! - the fraction of weight elements that differ between the initial and the final weights
//!   (f32 and bf16);
//! - on the f32 head, at each checkpoint step, the fraction of that step's per-element updates
//!   that round-to-nearest bf16 storage would have rounded away (the update is below half a
//!   bf16 spacing of the weight): what a bf16 head without stochastic rounding would lose.
//!
//! With `--rtn`, a third head runs too: f32 storage whose weights are rounded to the nearest
//! bf16 after every step (momentum stays f32), an emulation of round-to-nearest bf16 weights.
//! Ends with one JSON line.

use lsc_benches::{JsonLine, peak_rss_mb};
use lsc_comm::LocalComm;
use lsc_head::{DType, HeadConfig, LossKind, MarginSoftmax, Update};
use lsc_tensor::{Rng, Tensor};
use std::time::Instant;

const USAGE: &str = "usage: bench-head-dtype [--classes C] [--dim D] [--batch B] [--steps N] [--noise X] [--lr LR]
                        [--loss arcface|cosface] [--scale S] [--margin M] [--eval E] [--tile T]
                        [--seed SEED] [--rtn]";

/// Stream tags that separate the data's random streams from each other and from the head's.
const CENTRE_TAG: u64 = 0xC3E7_0000_0000_0001;
const TRAIN_TAG: u64 = 0x7A11_0000_0000_0002;
const EVAL_TAG: u64 = 0xE7A1_0000_0000_0003;
/// The checkpoints (percent of the run) at which the loss and the top-1 are reported.
const CHECKPOINTS: [usize; 4] = [25, 50, 75, 100];

struct Args {
    classes: usize,
    dim: usize,
    batch: usize,
    steps: usize,
    noise: f32,
    lr: f32,
    loss: LossKind,
    scale: f32,
    margin: Option<f32>,
    eval: usize,
    tile: usize,
    seed: u64,
    rtn: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        classes: 100_000,
        dim: 64,
        batch: 1024,
        steps: 240,
        noise: 0.5,
        lr: 0.1,
        loss: LossKind::ArcFace,
        scale: 24.0,
        margin: None,
        eval: 4096,
        tile: HeadConfig::new(LossKind::ArcFace).tile,
        seed: 0,
        rtn: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--bench" {
            continue; // added by `cargo bench`
        }
        if flag == "--rtn" {
            a.rtn = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        const VALUED: [&str; 12] = [
            "--classes",
            "--dim",
            "--batch",
            "--steps",
            "--eval",
            "--tile",
            "--noise",
            "--lr",
            "--scale",
            "--margin",
            "--seed",
            "--loss",
        ];
        if !VALUED.contains(&flag.as_str()) {
            return Err(format!("unknown flag {flag}\n{USAGE}"));
        }
        let v = it.next().ok_or(format!("{flag} needs a value\n{USAGE}"))?;
        let count = |v: &str| match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{flag} {v}: expected a positive integer")),
        };
        let real = |v: &str, zero_ok: bool| match v.parse::<f32>() {
            Ok(x) if x.is_finite() && (x > 0.0 || (zero_ok && x == 0.0)) => Ok(x),
            _ => Err(format!(
                "{flag} {v}: expected a {} number",
                if zero_ok {
                    "finite non-negative"
                } else {
                    "finite positive"
                }
            )),
        };
        match flag.as_str() {
            "--classes" => a.classes = count(&v)?,
            "--dim" => a.dim = count(&v)?,
            "--batch" => a.batch = count(&v)?,
            "--steps" => a.steps = count(&v)?,
            "--eval" => a.eval = count(&v)?,
            "--tile" => a.tile = count(&v)?,
            "--noise" => a.noise = real(&v, true)?,
            "--lr" => a.lr = real(&v, false)?,
            "--scale" => a.scale = real(&v, false)?,
            "--margin" => a.margin = Some(real(&v, true)?),
            "--seed" => {
                a.seed = v
                    .parse()
                    .map_err(|_| format!("--seed {v}: expected a non-negative integer"))?
            }
            "--loss" => {
                a.loss = match v.as_str() {
                    "arcface" => LossKind::ArcFace,
                    "cosface" => LossKind::CosFace,
                    o => return Err(format!("--loss {o}: expected arcface or cosface")),
                }
            }
            o => unreachable!("{o} is in VALUED"),
        }
    }
    if a.classes > u32::MAX as usize {
        return Err(format!("--classes {}: at most {}", a.classes, u32::MAX));
    }
    if let Some(m) = a.margin
        && a.loss == LossKind::ArcFace
        && m >= std::f32::consts::PI
    {
        return Err(format!("--margin {m}: an ArcFace margin must be below π"));
    }
    Ok(a)
}

/// The class centres `[C, D]`: unit vectors, row k from its own stream.
fn centres(a: &Args) -> Vec<f32> {
    let mut c = vec![0.0f32; a.classes * a.dim];
    for (k, row) in c.chunks_mut(a.dim).enumerate() {
        let mut rng = Rng::stream(a.seed ^ CENTRE_TAG, k as u64);
        for v in row.iter_mut() {
            *v = rng.normal();
        }
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        for v in row.iter_mut() {
            *v /= n;
        }
    }
    c
}

/// `n` samples from `rng`: uniform labels, embeddings `c_y + noise·g`, g ~ N(0, I/dim).
fn samples(a: &Args, centres: &[f32], n: usize, rng: &mut Rng) -> (Tensor, Vec<u32>) {
    let d = a.dim;
    let sd = a.noise / (d as f32).sqrt();
    let labels: Vec<u32> = (0..n).map(|_| rng.below(a.classes as u64) as u32).collect();
    let mut x = Vec::with_capacity(n * d);
    for &y in &labels {
        let c = &centres[y as usize * d..(y as usize + 1) * d];
        x.extend(c.iter().map(|&cv| cv + sd * rng.normal()));
    }
    (Tensor::from_vec(&[n, d], x).expect("n×d"), labels)
}

/// Round to the nearest bf16 (ties to even), returned as f32.
fn bf16_nearest(v: f32) -> f32 {
    if !v.is_finite() {
        return v;
    }
    let b = v.to_bits();
    let lsb = (b >> 16) & 1;
    f32::from_bits(b.wrapping_add(0x7FFF + lsb) & 0xFFFF_0000)
}

/// Of the elements that one step changed (`before` → `after`, f32 storage), the fraction whose
/// change round-to-nearest bf16 storage would have lost: `nearest(nearest(w) + Δ) == nearest(w)`.
fn rtn_lost_frac(before: &[f32], after: &[f32]) -> f64 {
    let (mut moved, mut lost) = (0usize, 0usize);
    for (&w0, &w1) in before.iter().zip(after) {
        if w0 != w1 {
            moved += 1;
            let q = bf16_nearest(w0);
            if bf16_nearest(q + (w1 - w0)) == q {
                lost += 1;
            }
        }
    }
    lost as f64 / moved.max(1) as f64
}

fn changed_frac(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len().max(1) as f64
}

fn top1(head: &MarginSoftmax, x: &Tensor, labels: &[u32]) -> f64 {
    let pred = head.predict(x, &LocalComm).expect("predict");
    pred.iter().zip(labels).filter(|(p, y)| p == y).count() as f64 / labels.len().max(1) as f64
}

/// One head under test, with its per-step losses and step seconds.
struct Run {
    name: &'static str,
    head: MarginSoftmax,
    /// Round the weights to the nearest bf16 after every step (the `--rtn` emulation).
    round_nearest: bool,
    losses: Vec<f64>,
    secs: f64,
    skipped: usize,
    init: Vec<f32>,
    /// (checkpoint percent, mean loss over the window ending there, top-1)
    marks: Vec<(usize, f64, f64)>,
}

impl Run {
    fn new(name: &'static str, cfg: &HeadConfig, a: &Args, round_nearest: bool) -> Run {
        let mut head = MarginSoftmax::new(cfg, a.classes, a.dim, &LocalComm, a.seed);
        if round_nearest {
            let w = head.weights().into_iter().map(bf16_nearest).collect();
            head.set_weights(w);
        }
        let init = head.weights();
        Run {
            name,
            head,
            round_nearest,
            losses: Vec::new(),
            secs: 0.0,
            skipped: 0,
            init,
            marks: Vec::new(),
        }
    }

    fn step(&mut self, x: &Tensor, labels: &[u32], upd: &Update) {
        let t = Instant::now();
        let s = self.head.step(x, labels, &LocalComm, upd).expect("head step");
        self.secs += t.elapsed().as_secs_f64();
        if self.round_nearest {
            let w = self.head.weights().into_iter().map(bf16_nearest).collect();
            self.head.set_weights(w);
        }
        self.skipped += usize::from(s.skipped);
        self.losses.push(s.loss as f64);
    }

    /// Mean loss over the `k` steps ending at the latest one.
    fn window(&self, k: usize) -> f64 {
        let n = self.losses.len();
        let w = &self.losses[n - k.min(n)..];
        w.iter().sum::<f64>() / w.len().max(1) as f64
    }
}

fn main() {
    let a = lsc_benches::args_or_exit(parse());
    let wall = Instant::now();
    let mut cfg = HeadConfig::new(a.loss);
    cfg.scale = a.scale;
    cfg.margin = a.margin.unwrap_or(if a.loss == LossKind::CosFace { 0.35 } else { 0.5 });
    cfg.sample_rate = 1.0;
    cfg.tile = a.tile;
    let upd = Update {
        lr: a.lr,
        momentum: 0.9,
        weight_decay: 5e-4,
    };
    let loss_name = format!("{:?}", a.loss).to_lowercase();
    println!(
        "bench-head-dtype: {} classes x {} dim, batch {}, {} steps ({:.2} samples per class), noise {}, lr {}, \
         {} s={} m={}, seed {}",
        a.classes,
        a.dim,
        a.batch,
        a.steps,
        (a.steps * a.batch) as f64 / a.classes as f64,
        a.noise,
        a.lr,
        loss_name,
        cfg.scale,
        cfg.margin,
        a.seed
    );
    let t = Instant::now();
    let c = centres(&a);
    let (ex, ey) = samples(&a, &c, a.eval, &mut Rng::stream(a.seed ^ EVAL_TAG, 0));
    let mut runs = vec![Run::new("f32", &cfg, &a, false), {
        let mut c16 = cfg.clone();
        c16.dtype = DType::Bf16;
        Run::new("bf16", &c16, &a, false)
    }];
    if a.rtn {
        runs.push(Run::new("bf16-rtn", &cfg, &a, true));
    }
    let init_diff = runs[0]
        .init
        .iter()
        .zip(&runs[1].init)
        .map(|(x, y)| (x - y).abs() / x.abs().max(1e-30))
        .fold(0.0f32, f32::max);
    println!(
        "setup {:.1} s; initial weights: bf16 = f32 up to relative {:.2e} (bf16 rounding); chance top-1 {:.2e}; \
         held-out set {} samples",
        t.elapsed().as_secs_f64(),
        init_diff,
        1.0 / a.classes as f64,
        a.eval
    );
    let k = (a.steps / 10).max(1);
    let marks: Vec<(usize, usize)> = CHECKPOINTS
        .iter()
        .map(|&p| (p, (a.steps * p).div_ceil(100).max(1)))
        .collect();
    let mut rtn_lost: Vec<(usize, f64)> = Vec::new();
    for step in 1..=a.steps {
        let (x, y) = samples(&a, &c, a.batch, &mut Rng::stream(a.seed ^ TRAIN_TAG, step as u64));
        let mark = marks.iter().find(|m| m.1 == step).map(|m| m.0);
        let before = mark.map(|_| runs[0].head.weights());
        for r in &mut runs {
            r.step(&x, &y, &upd);
        }
        if let (Some(p), Some(b)) = (mark, before) {
            rtn_lost.push((p, rtn_lost_frac(&b, &runs[0].head.weights())));
        }
        if step.is_multiple_of(k) || step == a.steps {
            let mut line = format!("step {step:>5}/{}  mean loss over last {}:", a.steps, k.min(step));
            for r in &runs {
                line += &format!("  {} {:.4}", r.name, r.window(k));
            }
            line += "  s/step:";
            for r in &runs {
                line += &format!(" {} {:.3}", r.name, r.secs / step as f64);
            }
            println!("{line}");
        }
        if let Some(p) = mark {
            let mut line = format!("  checkpoint {p:>3}% (step {step}): top-1");
            for r in &mut runs {
                let acc = top1(&r.head, &ex, &ey);
                let l = r.window(k);
                r.marks.push((p, l, acc));
                line += &format!("  {} {:.4}", r.name, acc);
            }
            let lost = rtn_lost.last().map_or(0.0, |l| l.1);
            line += &format!(
                "  | f32 step updates round-to-nearest bf16 would lose: {:.1}%",
                100.0 * lost
            );
            println!("{line}");
        }
    }
    let changed: Vec<f64> = runs.iter().map(|r| changed_frac(&r.init, &r.head.weights())).collect();
    let mut line = String::from("weight elements changed from init to final:");
    for (r, ch) in runs.iter().zip(&changed) {
        line += &format!("  {} {:.4}", r.name, ch);
    }
    println!("{line}");
    for r in &runs {
        if r.skipped > 0 {
            println!("{}: {} step(s) skipped (non-finite)", r.name, r.skipped);
        }
    }
    let (f, b) = (&runs[0], &runs[1]);
    let (fl, bl) = (f.window(k), b.window(k));
    let (ft, bt) = (f.marks.last().map_or(0.0, |m| m.2), b.marks.last().map_or(0.0, |m| m.2));
    println!(
        "final: loss f32 {fl:.4} bf16 {bl:.4} (bf16/f32 {:.3}); top-1 f32 {ft:.4} bf16 {bt:.4} (diff {:+.2} points); \
         wall {:.1} s",
        bl / fl,
        100.0 * (bt - ft),
        wall.elapsed().as_secs_f64()
    );
    let mut j = JsonLine::default();
    j.str("bench", "head_dtype");
    j.str("loss", &loss_name);
    j.num("classes", a.classes as f64);
    j.num("dim", a.dim as f64);
    j.num("batch", a.batch as f64);
    j.num("steps", a.steps as f64);
    j.num("noise", a.noise as f64);
    j.num("lr", a.lr as f64);
    j.num("scale", cfg.scale as f64);
    j.num("margin", cfg.margin as f64);
    j.num("f32_final_loss", fl);
    j.num("bf16_final_loss", bl);
    j.num("f32_top1", ft);
    j.num("bf16_top1", bt);
    for r in &runs {
        let key = r.name.replace('-', "_");
        for &(p, l, _) in &r.marks {
            j.num(&format!("{key}_loss_{p}pct"), l);
        }
        for &(p, _, acc) in &r.marks {
            j.num(&format!("{key}_top1_{p}pct"), acc);
        }
    }
    j.num("sec_per_step_f32", f.secs / a.steps as f64);
    j.num("sec_per_step_bf16", b.secs / a.steps as f64);
    j.num("f32_changed_frac", changed[0]);
    j.num("bf16_changed_frac", changed[1]);
    if a.rtn {
        j.num("bf16_rtn_changed_frac", changed[2]);
        j.num("bf16_rtn_final_loss", runs[2].window(k));
        j.num("bf16_rtn_top1", runs[2].marks.last().map_or(0.0, |m| m.2));
    }
    for &(p, lost) in &rtn_lost {
        j.num(&format!("f32_update_rtn_lost_frac_{p}pct"), lost);
    }
    j.num("wall_s", wall.elapsed().as_secs_f64());
    j.num("peak_rss_mb", peak_rss_mb());
    println!("{}", j.finish());
}
