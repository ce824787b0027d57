// Temporary profiling harness (to be deleted).
use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() {
    let dev = Device::Cpu;
    let shapes = [(4096usize, 4096usize), (4096, 4096), (4096, 4096), (4096, 4096), (4096, 11008), (4096, 11008), (11008, 4096)];
    let ws: Vec<Tensor> = shapes.iter().map(|&(k, n)| Tensor::randn(0f32, 0.02, (n, k), &dev).unwrap()).collect();
    let wts: Vec<Tensor> = ws.iter().map(|w| w.t().unwrap().contiguous().unwrap()).collect();
    let ts: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    for t in ts {
        for layout in 0..2 {
            let mut tot = 0.0;
            let mut per = vec![];
            for rep in 0..3 {
                for (i, &(k, _n)) in shapes.iter().enumerate() {
                    let x = Tensor::randn(0f32, 1.0, (1, t, k), &dev).unwrap();
                    let t0 = Instant::now();
                    let _y = if layout == 0 { x.broadcast_matmul(&ws[i].t().unwrap()).unwrap() } else { x.broadcast_matmul(&wts[i]).unwrap() };
                    let el = t0.elapsed().as_secs_f64();
                    if rep > 0 { tot += el / 2.0; if rep == 2 { per.push(format!("{:.0}", el * 1e3)); } }
                }
            }
            let fl: f64 = shapes.iter().map(|&(k, n)| 2.0 * (t * k * n) as f64).sum();
            println!("T={t:4} {}: layer matmuls {:7.1} ms ({:5.1} GFLOP/s) per-op {:?}", if layout == 0 { "w.t() " } else { "wt    " }, tot * 1e3, fl / tot / 1e9, per);
        }
    }
}
