//! Decoding's matrix–vector product, one row × Vicuna-7B's MLP up projection (4096 → 11008), in every
//! weight format: the rate at which each kernel streams its weights (bytes per second of the format).
//! Each iteration multiplies 4 distinct copies (≥ 190 MB in every format but q4_k's 104), so the
//! weights come from memory, not from a last-level cache, as in decoding.
//!
//! `cargo bench -p nuwa --bench gemv`
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nuwa::models::gemm::{Format, Packed, Rows};
use std::hint::black_box;
use std::time::Duration;

fn bench_gemv(c: &mut Criterion) {
    let (n, k) = (11008, 4096);
    let mut s = 1u32;
    let mut value = || {
        s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (s >> 8) as f32 / (1 << 24) as f32 - 0.5
    };
    let w: Vec<f32> = (0..n * k).map(|_| value()).collect();
    let x: Vec<f32> = (0..k).map(|_| value()).collect();
    let threads = candle_core::utils::get_num_threads();
    let mut g = c.benchmark_group("gemv_1x4096x11008");
    g.sample_size(20).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    for format in [Format::F32, Format::Bf16Pairs, Format::F16, Format::Q8_0, Format::Q4K] {
        let copies: Vec<Packed> = (0..4).map(|_| Packed::new(Rows::F32(&w), n, k, format)).collect();
        let mut y = vec![0f32; n];
        g.throughput(Throughput::Bytes(copies.iter().map(|p| p.bytes() as u64).sum()));
        g.bench_function(BenchmarkId::from_parameter(format!("{format:?}")), |b| {
            b.iter(|| {
                for packed in &copies {
                    packed.matmul(Rows::F32(black_box(&x)), 1, None, &mut y, threads)
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_gemv);
criterion_main!(benches);
