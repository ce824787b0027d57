//! Nüwa's stage 1 alone at LLaVA-1.5's real size: 576 patches on a 24×24 grid, CLIP-L width 1024,
//! nine hidden states averaged for the similarity features; budgets 64 / 128 / 192. Compare with the
//! vision encoder's time in `nuwa bench` (the goal: stage 1 ≤ 3 % of it).
//!
//! `cargo bench -p nuwa --bench stage1`
use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use nuwa::bench::RandomWeights;
use nuwa::models::llava::similarity_features;
use nuwa::prune::nuwa::{budgets, stage1, NuwaConfig};
use std::hint::black_box;
use std::time::Duration;

const SIDE: usize = 24;
const WIDTH: usize = 1024;

fn inputs() -> (Vec<f32>, Tensor, Vec<Tensor>) {
    let dev = Device::Cpu;
    let n = SIDE * SIDE;
    let r = RandomWeights { seed: 1, std: 1.0 };
    // Saliency: a softmax row summed over 16 heads, positive and summing to about 16.
    let saliency: Vec<f32> = r.values("saliency", n).iter().map(|v| (v + 2.0) * 16.0 / (2.0 * n as f32)).collect();
    let x = Tensor::from_vec(r.values("x", n * WIDTH), (n, WIDTH), &dev).unwrap();
    let hidden =
        (0..9).map(|i| Tensor::from_vec(r.values(&format!("h{i}"), n * WIDTH), (n, WIDTH), &dev).unwrap()).collect();
    (saliency, x, hidden)
}

fn bench_stage1(c: &mut Criterion) {
    let (saliency, x, hidden) = inputs();
    let mut g = c.benchmark_group("stage1_576x1024");
    g.sample_size(30).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    g.bench_function("similarity_features (mean of 9 hidden states)", |b| {
        b.iter(|| similarity_features(black_box(&hidden)).unwrap())
    });
    for budget in [64usize, 128, 192] {
        let cfg = NuwaConfig { budget, ..NuwaConfig::default() };
        let k = budgets(budget, cfg.stages, SIDE, SIDE);
        g.bench_with_input(BenchmarkId::new("stage1 with similarity features", budget), &budget, |b, _| {
            b.iter(|| {
                let m = similarity_features(&hidden).unwrap();
                stage1(black_box(&saliency), &x, &m, (SIDE, SIDE), &k, &cfg).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_stage1);
criterion_main!(benches);
