//! Criterion benches of the CPU kernels: `cargo bench -p lsc-benches --bench criterion_kernels`.
//! `cargo test --benches` runs each once as a smoke test.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lsc_comm::LocalComm;
use lsc_head::store::bf16_stochastic;
use lsc_head::{HeadConfig, LossKind, MarginSoftmax, Update};
use lsc_tensor::cpu::{ConvGeom, Par, Trans, im2col, math, matmul};
use lsc_tensor::{Rng, Tensor};
use std::hint::black_box;

fn gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm");
    g.sample_size(10);
    let mut rng = Rng::new(0);
    for (name, ta, tb, m, n, k) in [
        ("head_logits_128x256x512", Trans::N, Trans::T, 128, 256, 512),
        ("head_dx_128x512x256", Trans::N, Trans::N, 128, 512, 256),
        ("head_dw_256x512x128", Trans::T, Trans::N, 256, 512, 128),
        ("conv_16x784x144", Trans::N, Trans::N, 16, 784, 144),
    ] {
        let a: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.normal()).collect();
        let mut out = vec![0.0f32; m * n];
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(name, |bch| {
            bch.iter(|| matmul(ta, tb, m, n, k, &a, &b, &mut out, false, Par::Seq))
        });
    }
    g.finish();
}

fn elementwise(c: &mut Criterion) {
    let mut g = c.benchmark_group("elementwise");
    g.sample_size(20);
    let mut rng = Rng::new(1);
    let x: Vec<f32> = (0..1 << 16).map(|_| rng.normal() * 10.0).collect();
    g.throughput(Throughput::Elements(x.len() as u64));
    let shift: Vec<f32> = (0..x.len()).map(|i| (i % 7) as f32).collect();
    g.bench_function("exp_sub_acc_64k", |b| {
        let mut acc = vec![0.0f32; x.len()];
        b.iter(|| math::exp_sub_acc(black_box(&x), &shift, &mut acc))
    });
    g.bench_function("dot_64k", |b| b.iter(|| black_box(math::dot(&x, &x))));
    g.bench_function("bf16_stochastic_64k", |b| {
        b.iter(|| {
            x.iter()
                .enumerate()
                .map(|(i, &v)| bf16_stochastic(v, i as u32 * 2_654_435_761).to_bits() as u32)
                .sum::<u32>()
        })
    });
    let geo = ConvGeom {
        c: 16,
        h: 28,
        w: 28,
        kh: 3,
        kw: 3,
        stride: 1,
        pad: 1,
    };
    let img: Vec<f32> = (0..geo.c * geo.h * geo.w).map(|_| rng.normal()).collect();
    let mut col = vec![0.0f32; geo.col_rows() * geo.col_cols()];
    g.throughput(Throughput::Elements(col.len() as u64));
    g.bench_function("im2col_16x28x28_k3", |b| b.iter(|| im2col(&img, &geo, &mut col)));
    g.finish();
}

fn head_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("head");
    g.sample_size(10);
    let (classes, dim, batch) = (20_000, 128, 64);
    let upd = Update {
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 5e-4,
    };
    let mut rng = Rng::new(2);
    let emb = Tensor::randn(&[batch, dim], 1.0, &mut rng);
    let labels: Vec<u32> = (0..batch).map(|_| rng.below(classes as u64) as u32).collect();
    g.throughput(Throughput::Elements((6 * batch * classes * dim) as u64));
    for loss in [LossKind::ArcFace, LossKind::Softmax] {
        let mut head = MarginSoftmax::new(&HeadConfig::new(loss), classes, dim, &LocalComm, 0);
        g.bench_function(format!("fused_step_{loss:?}_20k"), |b| {
            b.iter(|| head.step(&emb, &labels, &LocalComm, &upd).expect("step").loss)
        });
    }
    g.finish();
}

criterion_group!(benches, gemm, elementwise, head_step);
criterion_main!(benches);
