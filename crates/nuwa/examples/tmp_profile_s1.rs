// Temporary profiling harness (to be deleted).
use candle_core::{Device, Tensor};
use nuwa::bench::RandomWeights;
use nuwa::prune::nuwa::*;
use std::time::Instant;
fn main() {
    let dev = Device::Cpu;
    let n = 576; let d = 1024;
    let r = RandomWeights { seed: 1, std: 1.0 };
    let saliency: Vec<f32> = r.values("saliency", n).iter().map(|v| (v + 2.0) * 16.0 / (2.0 * n as f32)).collect();
    let x = Tensor::from_vec(r.values("x", n * d), (n, d), &dev).unwrap();
    let m = Tensor::from_vec(r.values("m", n * d), (n, d), &dev).unwrap();
    for rep in 0..3 {
    for budget in [64usize, 128, 192] {
        let cfg = NuwaConfig { budget, ..NuwaConfig::default() };
        let k = budgets(budget, cfg.stages, 24, 24);
        let t = Instant::now();
        let anchors = select_anchors(&saliency, 24, 24, k.k1, k.top_n, true);
        let t_a = t.elapsed().as_secs_f64()*1e3;
        let a_s: Vec<f32> = anchors.iter().map(|&a| saliency[a]).collect();
        let p = pillars(&a_s, 0.55);
        let rows: Vec<usize> = anchors.iter().zip(&p).filter(|(_, &q)| !q).map(|(&a, _)| a).collect();
        let t = Instant::now();
        let g = similarity_rows(&m, &rows, 24, 24, 280.0).unwrap();
        let t_g = t.elapsed().as_secs_f64()*1e3;
        let t = Instant::now();
        let _agg = aggregate(&g, &rows, &x).unwrap();
        let t_ag = t.elapsed().as_secs_f64()*1e3;
        let t = Instant::now();
        let _s = stage1(&saliency, &x, &m, (24, 24), &k, &cfg).unwrap();
        let t_s = t.elapsed().as_secs_f64()*1e3;
        if rep > 0 { println!("B={budget} K1={} collectors={}: anchors {t_a:.2} ms, graph {t_g:.2} ms, aggregate {t_ag:.2} ms | stage1 total {t_s:.2} ms", k.k1, rows.len()); }
    }}
}
