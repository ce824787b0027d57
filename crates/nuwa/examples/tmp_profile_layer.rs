// Temporary profiling harness (to be deleted).
use candle_core::{DType, Device, Tensor};
use nuwa::bench::{Preset, RandomWeights};
use nuwa::models::llama::Llama;
use std::time::Instant;
fn main() {
    let dev = Device::Cpu;
    let mut cfg = Preset::Llava15_7b.config().text_config;
    cfg.num_hidden_layers = 1;
    cfg.vocab_size = Some(256);
    let vb = RandomWeights::default().var_builder(DType::F32, &dev);
    let llm = Llama::new(&cfg, vb.pp("model"), vb.pp("lm_head")).unwrap();
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    for &t in &args {
        let x = Tensor::randn(0f32, 1.0, (t, 4096), &dev).unwrap();
        let pos: Vec<u32> = (0..t as u32).collect();
        for _ in 0..3 {
            let mut cache = llm.new_cache(0);
            let t0 = Instant::now();
            llm.forward(&x, &pos, &mut cache, None).unwrap();
            let el = t0.elapsed().as_secs_f64();
            let fl = nuwa::bench::layer_flops(t, 4096, 11008);
            println!("T={t}: {:.1} ms, {:.1} GFLOP/s", el * 1e3, fl / el / 1e9);
        }
    }
}
