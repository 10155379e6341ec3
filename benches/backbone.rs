//! `cargo xtask bench-backbone`: the IResNet backbone alone on random data. A train step is
//! forward + backward (from a random embedding gradient) + the SGD update; inference is the
//! eval-mode forward of the training graph and of the BN-folded `InferenceNet`. Each figure is
//! the median over the timed steps after warm-up; peak RSS is per phase (`VmHWM`, reset
//! between phases where the kernel allows). `--profile` adds where the train step's time goes
//! per layer type, each against the plain GEMM rate on that layer type's shapes, measured in
//! the same run. Ends with one JSON line.

use lsc_benches::{Flags, JsonLine, median, peak_rss_mb};
use lsc_nn::{Backbone, IResNet, InferenceNet, Mode, ResNetConfig, profile};
use lsc_optim::Sgd;
use lsc_tensor::cpu::{Par, Trans, matmul};
use lsc_tensor::{Rng, Tensor};
use std::time::Instant;

const USAGE: &str = "usage: bench-backbone [--model NAME] [--batch B] [--steps N] [--warmup W] [--threads T]
                      [--infer-only] [--profile] [--no-winograd] [--convs]

--convs times each distinct 3x3 stride-1 convolution of the model alone, Winograd against
im2col + GEMM, interleaved (forward, input gradient, weight gradient), and exits.";

struct Args {
    model: String,
    batch: usize,
    steps: usize,
    warmup: usize,
    threads: usize,
    infer_only: bool,
    profile: bool,
    winograd: bool,
    convs: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        model: "resnet50".into(),
        batch: 16,
        steps: 3,
        warmup: 1,
        threads: 0,
        infer_only: false,
        profile: false,
        winograd: true,
        convs: false,
    };
    let mut f = Flags::from_env(USAGE);
    while let Some(flag) = f.next() {
        match flag.as_str() {
            "--model" => a.model = f.string()?,
            "--batch" => a.batch = f.value()?,
            "--steps" => a.steps = f.value()?,
            "--warmup" => a.warmup = f.value()?,
            "--threads" => a.threads = f.value()?,
            "--infer-only" => a.infer_only = true,
            "--profile" => a.profile = true,
            "--no-winograd" => a.winograd = false,
            "--convs" => a.convs = true,
            _ => return Err(f.unknown()),
        }
    }
    if a.batch == 0 || a.steps == 0 {
        return Err(format!("--batch and --steps must be positive\n{USAGE}"));
    }
    Ok(a)
}

/// Resets `VmHWM` to the current RSS (Linux ≥ 4.0); false where that is not possible.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Times `warmup + steps` calls of `f`, printing each timed one; returns the timed seconds.
fn timed(label: &str, batch: usize, warmup: usize, steps: usize, mut f: impl FnMut()) -> Vec<f64> {
    let mut times = Vec::new();
    for i in 0..warmup + steps {
        let t = Instant::now();
        f();
        let s = t.elapsed().as_secs_f64();
        if i >= warmup {
            println!(
                "{label} step {}: {s:.3} s, {:.2} images/s",
                i - warmup + 1,
                batch as f64 / s
            );
            times.push(s);
        }
    }
    times
}

/// The convolutions of the net as GEMMs: (M = cout, N = oh·ow, K = cin·k·k, count).
fn conv_gemm_shapes(cfg: &ResNetConfig) -> Vec<(usize, usize, usize, usize)> {
    let [mut h, mut w] = cfg.input_size;
    let mut v = vec![(cfg.widths[0], h * w, 27, 1)];
    for (_, _, cin, cout, stride) in cfg.unit_plan() {
        v.push((cout, h * w, cin * 9, 1));
        let (oh, ow) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
        v.push((cout, oh * ow, cout * 9, 1));
        if stride != 1 || cin != cout {
            v.push((cout, oh * ow, cin, 1));
        }
        (h, w) = (oh, ow);
    }
    // Merge equal shapes.
    let mut m: Vec<(usize, usize, usize, usize)> = Vec::new();
    for s in v {
        match m.iter_mut().find(|t| (t.0, t.1, t.2) == (s.0, s.1, s.2)) {
            Some(t) => t.3 += 1,
            None => m.push(s),
        }
    }
    m
}

/// The plain GEMM rate (rayon-parallel `matmul`) on each pass's shapes over a batch of `nb`
/// images: (forward, backward-data, backward-weight) GFLOP/s, FLOP-weighted over the net's
/// convolutions (total FLOPs over total time).
fn plain_gemm_rates(cfg: &ResNetConfig, nb: usize) -> [f64; 3] {
    let mut rng = Rng::new(3);
    let mut flops = [0.0f64; 3];
    let mut secs = [0.0f64; 3];
    for (m, n1, k, count) in conv_gemm_shapes(cfg) {
        if k < 32 {
            continue; // the stem: too small to say anything about the GEMM rate
        }
        let n = n1 * nb;
        let a: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.normal()).collect();
        let d: Vec<f32> = (0..m * n).map(|_| rng.normal()).collect();
        let mut c = vec![0.0f32; m * n.max(k)];
        let mut c2 = vec![0.0f32; k * n];
        let f = 2.0 * (m * n * k) as f64;
        let reps = 3;
        let time = |g: &mut dyn FnMut()| {
            g();
            let t = Instant::now();
            for _ in 0..reps {
                g();
            }
            t.elapsed().as_secs_f64() / reps as f64
        };
        // fwd: W[m,k]·col[k,n]; bwd-data: Wᵀ[k,m]·dY[m,n]; bwd-weight: dY[m,n]·colᵀ[n,k].
        let s0 = time(&mut || matmul(Trans::N, Trans::N, m, n, k, &a, &b, &mut c, false, Par::Rayon));
        let s1 = time(&mut || matmul(Trans::T, Trans::N, k, n, m, &a, &d, &mut c2, false, Par::Rayon));
        let s2 = time(&mut || matmul(Trans::N, Trans::T, m, k, n, &d, &b, &mut c, false, Par::Rayon));
        for (i, s) in [s0, s1, s2].into_iter().enumerate() {
            flops[i] += f * count as f64;
            secs[i] += s * count as f64;
        }
    }
    [0, 1, 2].map(|i| flops[i] / secs[i].max(1e-12) / 1e9)
}

/// Groups of profile rows, in the order printed.
const GROUPS: [(&str, &[&str]); 7] = [
    ("conv fwd", &["conv.fwd"]),
    ("conv bwd-data", &["conv.bwd_data"]),
    ("conv bwd-weight", &["conv.bwd_weight"]),
    ("BN", &["bn.fwd", "bn.bwd", "bn_prelu.fwd", "bn_prelu.bwd"]),
    ("PReLU", &["prelu.fwd", "prelu.bwd"]),
    ("FC", &["fc.fwd", "fc.bwd"]),
    ("other", &[]),
];

fn profile_table(rows: &[profile::Entry], gemm: [f64; 3], steps: usize) -> String {
    let total: f64 = rows.iter().map(|e| e.secs).sum();
    let mut s = format!(
        "{:<16} {:>9} {:>7} {:>9} {:>11} {:>9}\n",
        "layer type", "s/step", "share", "GFLOP/s", "plain GEMM", "fraction"
    );
    let steps = steps.max(1) as f64;
    for (gi, (name, keys)) in GROUPS.iter().enumerate() {
        let sel: Vec<&profile::Entry> = if keys.is_empty() {
            rows.iter()
                .filter(|e| !GROUPS.iter().any(|(_, k)| k.contains(&e.name)))
                .collect()
        } else {
            rows.iter().filter(|e| keys.contains(&e.name)).collect()
        };
        let secs: f64 = sel.iter().map(|e| e.secs).sum();
        let flops: f64 = sel.iter().map(|e| e.flops).sum();
        let (gf, plain, frac) = if flops > 0.0 {
            let gf = flops / secs.max(1e-12) / 1e9;
            match gi {
                0..=2 => (
                    format!("{gf:.1}"),
                    format!("{:.1}", gemm[gi]),
                    format!("{:.2}", gf / gemm[gi]),
                ),
                _ => (format!("{gf:.1}"), "-".into(), "-".into()),
            }
        } else {
            ("-".into(), "-".into(), "-".into())
        };
        s += &format!(
            "{name:<16} {:>9.3} {:>6.1}% {gf:>9} {plain:>11} {frac:>9}\n",
            (secs / steps).max(0.0),
            (100.0 * secs / total.max(1e-12)).max(0.0),
        );
    }
    s
}

/// `--convs`: every distinct 3×3 stride-1 convolution, Winograd against im2col + GEMM.
fn conv_shapes(cfg: &ResNetConfig, batch: usize, reps: usize) {
    let mut shapes = Vec::new();
    let [mut h, mut w] = cfg.input_size;
    for (_, _, cin, cout, stride) in cfg.unit_plan() {
        shapes.push((cin, cout, h, w));
        (h, w) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
        shapes.push((cout, cout, h, w));
    }
    shapes.dedup();
    shapes.sort();
    shapes.dedup();
    println!(
        "{:<22} {:>10} {:>10} {:>7} {:>10} {:>10} {:>7} {:>10} {:>10} {:>7}",
        "conv (cin>cout, HxW)",
        "fwd gemm",
        "fwd wino",
        "ratio",
        "dx gemm",
        "dx wino",
        "ratio",
        "dW gemm",
        "dW wino",
        "ratio"
    );
    let mut rng = Rng::new(5);
    let mut j = JsonLine::default();
    j.str("bench", "backbone_convs");
    for (cin, cout, h, w) in shapes {
        let mut c = lsc_nn::Conv2d::new("c", cin, cout, 3, 1, 1, &mut rng);
        let x = Tensor::randn(&[batch, cin, h, w], 1.0, &mut rng);
        let dy = Tensor::randn(&[batch, cout, h, w], 1.0, &mut rng);
        let mut y = Tensor::default();
        let mut dx = Tensor::default();
        let mut t: [[Vec<f64>; 2]; 3] = Default::default();
        for _ in 0..reps + 1 {
            for (k, on) in [false, true].into_iter().enumerate() {
                lsc_nn::set_winograd(on);
                let s = Instant::now();
                c.infer_into(&x, &mut y);
                t[0][k].push(s.elapsed().as_secs_f64());
                let s = Instant::now();
                c.input_grad_into(&dy, &x, &mut dx);
                t[1][k].push(s.elapsed().as_secs_f64());
                let s = Instant::now();
                c.backward_from(&x, &dy, None);
                t[2][k].push(s.elapsed().as_secs_f64());
            }
        }
        let m = |v: &Vec<f64>| median(&v[1..]) * 1e3;
        let (f0, f1, b0, b1) = (m(&t[0][0]), m(&t[0][1]), m(&t[1][0]), m(&t[1][1]));
        let (w0, w1) = (m(&t[2][0]), m(&t[2][1]));
        println!(
            "{:<22} {f0:>8.1}ms {f1:>8.1}ms {:>6.2}x {b0:>8.1}ms {b1:>8.1}ms {:>6.2}x {w0:>8.1}ms {w1:>8.1}ms {:>6.2}x",
            format!("{cin}>{cout}, {h}x{w}"),
            f0 / f1,
            b0 / b1,
            w0 / w1
        );
        j.num(&format!("fwd_speedup_{cin}_{cout}_{h}"), f0 / f1);
        j.num(&format!("bwd_data_speedup_{cin}_{cout}_{h}"), b0 / b1);
        j.num(&format!("bwd_weight_speedup_{cin}_{cout}_{h}"), w0 / w1);
    }
    println!("{}", j.finish());
}

fn main() {
    let a = lsc_benches::args_or_exit(parse());
    if a.threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(a.threads)
            .build_global()
            .expect("the global pool is built once");
    }
    let threads = rayon::current_num_threads();
    lsc_nn::set_winograd(a.winograd);
    let cfg = match ResNetConfig::preset(&a.model) {
        Some(c) => c,
        None => {
            let names = lsc_nn::PRESETS;
            eprintln!("--model {}: not a preset (one of {})", a.model, names.join(", "));
            std::process::exit(2);
        }
    };
    if a.convs {
        conv_shapes(&cfg, a.batch, a.steps.max(3));
        return;
    }
    let [h, w] = cfg.input_size;
    let gflop_img = cfg.summary().flops as f64 / 1e9;
    let mut net = IResNet::new(&cfg, 0).expect("a preset is valid");
    let mut rng = Rng::new(1);
    let x = Tensor::randn(&[a.batch, 3, h, w], 1.0, &mut rng);
    let demb = Tensor::randn(&[a.batch, cfg.emb_dim], 0.01, &mut rng);
    println!(
        "{}: batch {} at {h}x{w}, {:.2} GFLOP/image forward, {threads} thread(s)",
        a.model, a.batch, gflop_img
    );
    let mut j = JsonLine::default();
    j.str("bench", "backbone");
    j.str("model", &a.model);
    j.num("batch", a.batch as f64);
    j.num("threads", threads as f64);
    j.num("steps", a.steps as f64);
    j.num("gflop_per_image", gflop_img);
    j.str("winograd", if a.winograd { "on" } else { "off" });
    let mut prof_rows = Vec::new();

    if !a.infer_only {
        let mut opt = Sgd::new(0.9, 5e-4);
        let mut step = 0u64;
        reset_peak_rss();
        let mut run_step = |net: &mut IResNet, opt: &mut Sgd| {
            net.set_step(step);
            step += 1;
            Backbone::forward(net, &x, Mode::Train);
            Backbone::backward(net, &demb);
            opt.step(0.01, &mut |f| Backbone::visit_params(net, f));
        };
        let times = timed("train", a.batch, a.warmup, a.steps, || run_step(&mut net, &mut opt));
        let med = median(&times);
        let ips = a.batch as f64 / med;
        let rss = peak_rss_mb();
        println!(
            "train: median {med:.3} s/step, {ips:.2} images/s, {:.1} GFLOP/s (3x forward), peak RSS {rss:.0} MiB",
            ips * 3.0 * gflop_img
        );
        j.num("train_step_s", med);
        j.num("train_images_per_s", ips);
        j.num("train_gflops", ips * 3.0 * gflop_img);
        j.num("train_peak_rss_mb", rss);
        if a.profile {
            profile::reset();
            profile::enable(true);
            let t = Instant::now();
            for _ in 0..a.steps {
                run_step(&mut net, &mut opt);
            }
            let total = t.elapsed().as_secs_f64();
            profile::enable(false);
            prof_rows = profile::snapshot();
            println!("profiled {} train steps: {:.3} s/step", a.steps, total / a.steps as f64);
            j.num("profiled_step_s", total / a.steps as f64);
        }
    }

    // Inference: the training graph in eval mode, then the folded net.
    reset_peak_rss();
    let times = timed("eval", a.batch, a.warmup, a.steps, || {
        Backbone::forward(&mut net, &x, Mode::Eval);
    });
    let eval_ips = a.batch as f64 / median(&times);
    let folded = InferenceNet::from_resnet(&net);
    drop(net);
    let times = timed("folded", a.batch, a.warmup, a.steps, || {
        folded.forward(&x);
    });
    let fold_ips = a.batch as f64 / median(&times);
    let rss = peak_rss_mb();
    println!(
        "inference: eval {eval_ips:.2} images/s ({:.1} GFLOP/s), folded {fold_ips:.2} images/s ({:.1} GFLOP/s), peak RSS {rss:.0} MiB",
        eval_ips * gflop_img,
        fold_ips * gflop_img
    );
    j.num("eval_images_per_s", eval_ips);
    j.num("folded_images_per_s", fold_ips);
    j.num("folded_gflops", fold_ips * gflop_img);
    j.num("infer_peak_rss_mb", rss);

    if a.profile && !prof_rows.is_empty() {
        let gemm = plain_gemm_rates(&cfg, a.batch.min(4));
        println!("\nper layer type, train step (profiled steps; GEMM on the same conv shapes, rayon):");
        print!("{}", profile_table(&prof_rows, gemm, a.steps));
        println!("\nevery scope:\n{}", profile::report());
        j.num("plain_gemm_fwd_gflops", gemm[0]);
        j.num("plain_gemm_bwd_data_gflops", gemm[1]);
        j.num("plain_gemm_bwd_weight_gflops", gemm[2]);
    }
    println!("{}", j.finish());
}
