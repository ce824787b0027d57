//! One Vicuna-7B decoder layer (hidden 4096, intermediate 11008, 32 heads), random weights, prefill of
//! 620 tokens (an unpruned LLaVA-1.5 prompt: 576 vision + 44 text) vs 113 tokens (the same prompt
//! after stage 1 at budget 64: 64 vision tokens on average + 49 text), fresh KV cache each time.
//! The LM head is kept negligible (vocabulary 256) so the time is the layer's.
//!
//! `cargo bench -p nuwa --bench decoder_layer`
use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nuwa::bench::{layer_flops, Preset, RandomWeights};
use nuwa::layout::Positions;
use nuwa::models::decoder::Decoder;
use std::hint::black_box;
use std::time::Duration;

fn bench_layer(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut cfg = Preset::Llava15_7b.config().decoder().clone();
    cfg.num_hidden_layers = 1;
    cfg.vocab_size = Some(256);
    let vb = RandomWeights::default().var_builder(DType::F32, &dev);
    let llm = Decoder::new(&cfg, vb.pp("model"), vb.pp("lm_head")).unwrap();
    let mut g = c.benchmark_group("decoder_layer_7b");
    g.sample_size(10).measurement_time(Duration::from_secs(20)).warm_up_time(Duration::from_secs(2));
    for tokens in [620usize, 113] {
        let x = Tensor::from_vec(RandomWeights { seed: 2, std: 1.0 }.values("x", tokens * 4096), (tokens, 4096), &dev)
            .unwrap();
        let positions = Positions::Linear((0..tokens as u32).collect());
        g.throughput(Throughput::Elements(layer_flops(tokens, &cfg) as u64));
        g.bench_with_input(BenchmarkId::new("prefill tokens", tokens), &tokens, |b, _| {
            b.iter(|| {
                let mut cache = llm.new_cache(0);
                llm.forward(black_box(&x), &positions, &mut cache, None).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_layer);
criterion_main!(benches);
