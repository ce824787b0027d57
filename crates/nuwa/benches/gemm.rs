//! The packed kernels on the shapes that matter, in every weight format.
//!
//! - `gemv_1x4096x11008`: decoding's matrix–vector product (Vicuna-7B's MLP up projection), reported as
//!   the rate each kernel streams its weights (bytes per second of the format). Each iteration multiplies
//!   4 distinct copies (≥ 190 MB in every format but q4_k's 104), so the weights come from memory, not
//!   from a last-level cache, as in decoding.
//! - `gemv_cached_1x4096x1024`: the same product on one weight small enough to stay in the last-level
//!   cache: what each kernel computes per second when memory is not what bounds it.
//! - `gemm_MxKxN`: prefill's products (CLIP ViT-L's MLP and the 7B decoder's projections at 577 / 620
//!   rows), reported as multiply–adds per second (`elements` = 2·M·K·N FLOPs).
//! - `attn_decode_32x625x128`: one decoded token's attention in a 7B layer after a 625-token prompt
//!   (32 heads over a cache of f32 or f16 keys and values), 8 layers' caches per iteration so they come
//!   from memory; reported as the rate the cache is read.
//!
//! `cargo bench -p nuwa --bench gemm [-- FILTER]`
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nuwa::models::gemm::{Format, Packed, Rows};
use std::hint::black_box;
use std::time::Duration;

const FORMATS: [Format; 5] = [Format::F32, Format::Bf16Pairs, Format::F16, Format::Q8_0, Format::Q4K];

fn values(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1 << 24) as f32 - 0.5
        })
        .collect()
}

fn bench_gemv(c: &mut Criterion) {
    gemv(c, 11008, 4);
    gemv(c, 1024, 1);
}

/// 1 × 4096 × `n` over `copies` distinct copies of the weight.
fn gemv(c: &mut Criterion, n: usize, copies: usize) {
    let k = 4096;
    let (w, x) = (values(n * k, 1), values(k, 2));
    let threads = candle_core::utils::get_num_threads();
    let name = if copies == 1 { format!("gemv_cached_1x{k}x{n}") } else { format!("gemv_1x{k}x{n}") };
    let mut g = c.benchmark_group(name);
    g.sample_size(20).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    for format in FORMATS {
        let copies: Vec<Packed> = (0..copies).map(|_| Packed::new(Rows::F32(&w), n, k, format)).collect();
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

fn bench_gemm(c: &mut Criterion) {
    let threads = candle_core::utils::get_num_threads();
    for (m, k, n) in [(577, 1024, 4096), (577, 4096, 1024), (620, 4096, 4096), (620, 4096, 11008)] {
        let (w, a) = (values(n * k, 3), values(m * k, 4));
        let mut g = c.benchmark_group(format!("gemm_{m}x{k}x{n}"));
        g.sample_size(10).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
        g.throughput(Throughput::Elements(2 * (m * k * n) as u64));
        let mut y = vec![0f32; m * n];
        for format in FORMATS {
            let packed = Packed::new(Rows::F32(&w), n, k, format);
            g.bench_function(BenchmarkId::from_parameter(format!("{format:?}")), |b| {
                b.iter(|| packed.matmul(Rows::F32(black_box(&a)), m, None, &mut y, threads))
            });
        }
        g.finish();
    }
}

fn bench_attn(c: &mut Criterion) {
    use candle_core::{DType, Device, Tensor};
    use nuwa::models::attention::{attention, Mask, Products};
    let (heads, keys, d, layers) = (32, 625, 128, 8);
    let dev = Device::Cpu;
    let q = Tensor::randn(0f32, 1.0, (heads, 1, d), &dev).unwrap();
    let scale = 1.0 / (d as f64).sqrt();
    let mut g = c.benchmark_group(format!("attn_decode_{heads}x{keys}x{d}"));
    g.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    for dtype in [DType::F32, DType::F16] {
        // As a cache's filled part: each head's rows contiguous, the heads further apart.
        let cache = || {
            let t = Tensor::randn(0f32, 1.0, (heads, keys + 64, d), &dev).unwrap();
            t.to_dtype(dtype).unwrap().narrow(1, 0, keys).unwrap()
        };
        let kv: Vec<(Tensor, Tensor)> = (0..layers).map(|_| (cache(), cache())).collect();
        g.throughput(Throughput::Bytes((layers * 2 * heads * keys * d * dtype.size_in_bytes()) as u64));
        g.bench_function(BenchmarkId::from_parameter(format!("{dtype:?}")), |b| {
            b.iter(|| {
                for (k, v) in &kv {
                    black_box(attention(&q, k, v, scale, Mask::None, Products::F32).unwrap());
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_gemv, bench_gemm, bench_attn);
criterion_main!(benches);
