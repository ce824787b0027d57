// Temporary profiling harness (to be deleted).
use candle_core::{Device, Tensor, DType};
use std::time::Instant;
fn main() {
    let dev = Device::Cpu;
    let full: Vec<Tensor> = (0..9).map(|_| Tensor::randn(0f32, 1.0, (577, 1024), &dev).unwrap()).collect();
    let hidden: Vec<Tensor> = full.iter().map(|t| t.narrow(0, 1, 576).unwrap()).collect();
    for _ in 0..3 {
        let t0 = Instant::now();
        let a = nuwa::prune::nuwa::similarity_features(&hidden).unwrap();
        let t1 = t0.elapsed().as_secs_f64() * 1e3;
        let t0 = Instant::now();
        let mut acc = hidden[0].to_dtype(DType::F32).unwrap();
        for h in &hidden[1..] { acc = (acc + h.to_dtype(DType::F32).unwrap()).unwrap(); }
        let b = (acc / 9.0).unwrap();
        let t2 = t0.elapsed().as_secs_f64() * 1e3;
        let t0 = Instant::now();
        let st = Tensor::stack(&hidden, 0).unwrap();
        let t3 = t0.elapsed().as_secs_f64() * 1e3;
        let t0 = Instant::now();
        let _m = st.mean(0).unwrap();
        let t4 = t0.elapsed().as_secs_f64() * 1e3;
        let d = (a - &b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        println!("similarity_features {t1:.2} ms | chained adds {t2:.2} ms (max diff {d:e}) | stack {t3:.2} ms, mean(0) {t4:.2} ms");
    }
}
