//! CPU kernel rates: the GEMM wrapper on the FC and convolution shapes, and im2col.
//! `cargo bench -p lsc-benches --bench kernels` prints GFLOP/s per shape and a JSON line.

use lsc_benches::{JsonLine, median_secs};
use lsc_tensor::Rng;
use lsc_tensor::cpu::{ConvGeom, Par, Trans, im2col, matmul};

fn main() {
    let reps = std::env::var("LSC_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut rng = Rng::new(0);
    let mut json = JsonLine::default();
    json.str("bench", "kernels");
    println!("{:<34} {:>10} {:>10}", "kernel", "ms", "GFLOP/s");
    // (name, m, n, k): FC forward and weight gradient, a ResNet50 stage-1 conv as GEMM.
    for (name, m, n, k) in [
        ("fc_fwd_128x512x16384", 128, 16384, 512),
        ("fc_dw_512x128x16384", 512, 16384, 128),
        ("conv_64x3136x576", 64, 3136, 576),
    ] {
        let a: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.normal()).collect();
        let mut c = vec![0.0f32; m * n];
        let s = median_secs(1, reps, || {
            matmul(Trans::N, Trans::N, m, n, k, &a, &b, &mut c, false, Par::Rayon)
        });
        let gf = 2.0 * (m * n * k) as f64 / s / 1e9;
        println!("{name:<34} {:>10.2} {gf:>10.1}", s * 1e3);
        json.num(&format!("{name}_gflops"), gf);
    }
    // The fused head's per-tile products (one thread each; tiles run in parallel).
    for (name, ta, tb, m, n, k) in [
        ("head_logits_seq_128x256x512", Trans::N, Trans::T, 128, 256, 512),
        ("head_logits_nn_seq_128x256x512", Trans::N, Trans::N, 128, 256, 512),
        ("head_logits_tn_seq_256x128x512", Trans::N, Trans::T, 256, 128, 512),
        ("head_dx_seq_128x512x256", Trans::N, Trans::N, 128, 512, 256),
        ("head_dw_seq_256x512x128", Trans::T, Trans::N, 256, 512, 128),
    ] {
        let a: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.normal()).collect();
        let mut c = vec![0.0f32; m * n];
        let s = median_secs(2, reps * 3, || matmul(ta, tb, m, n, k, &a, &b, &mut c, false, Par::Seq));
        let gf = 2.0 * (m * n * k) as f64 / s / 1e9;
        println!("{name:<34} {:>10.3} {gf:>10.1}", s * 1e3);
        json.num(&format!("{name}_gflops"), gf);
    }
    let g = ConvGeom {
        c: 64,
        h: 56,
        w: 56,
        kh: 3,
        kw: 3,
        stride: 1,
        pad: 1,
    };
    let img: Vec<f32> = (0..g.c * g.h * g.w).map(|_| rng.normal()).collect();
    let mut col = vec![0.0f32; g.col_rows() * g.col_cols()];
    let s = median_secs(1, reps * 4, || im2col(&img, &g, &mut col));
    let gbs = (col.len() * 4) as f64 / s / 1e9;
    println!(
        "{:<34} {:>10.2} {:>10} ({gbs:.1} GB/s written)",
        "im2col_64x56x56_k3",
        s * 1e3,
        "-"
    );
    json.num("im2col_gb_per_s", gbs);
    println!("{}", json.finish());
}
