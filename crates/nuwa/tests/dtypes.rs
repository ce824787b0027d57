//! Half-precision loading: the model runs in f16 and bf16 and stays close to the f32 reference.
mod common;
use candle_core::{DType, Device};
use common::*;
use nuwa::{Engine, LoadOptions, Method, NuwaConfig};

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
fn f16_and_bf16_track_f32() {
    for dtype in [DType::F16, DType::BF16] {
        let e =
            Engine::load(&tiny_dir(), &LoadOptions { dtype, device: Device::Cpu, ..LoadOptions::default() }).unwrap();
        for (method, golden) in [
            (Method::NONE, "unpruned.logits_last"),
            (Method::Nuwa(NuwaConfig { budget: 64, ..NuwaConfig::default() }), "nuwa64.logits_last"),
        ] {
            let req = pixel_request(method, 1);
            let pre = e.prefill(&req).unwrap();
            let got = pre.logits.to_vec1::<f32>().unwrap();
            let want = g(golden).to_vec1::<f32>().unwrap();
            let d = max_abs_diff(&pre.logits, g(golden));
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let cos = cosine(&got, &want);
            println!("{dtype:?} {golden}: max |Δ| {d:.4} (logit scale {scale:.3}), cosine {cos:.6}");
            assert!(got.iter().all(|v| v.is_finite()), "{dtype:?}: non-finite logits");
            assert!(cos > 0.99, "{dtype:?} {golden}: cosine {cos}");
        }
    }
}

/// Logit cosine, max |Δ| and greedy agreement of `e` against `reference` on the fixture's request.
fn against(e: &Engine, reference: &Engine) -> (f32, f32, usize) {
    let req = pixel_request(Method::NONE, 8);
    let (a, b) = (e.prefill(&req).unwrap().logits, reference.prefill(&req).unwrap().logits);
    let cos = cosine(&a.to_vec1::<f32>().unwrap(), &b.to_vec1::<f32>().unwrap());
    let (ga, gb) =
        (e.generate(&req, &mut |_| {}).unwrap().tokens, reference.generate(&req, &mut |_| {}).unwrap().tokens);
    let agree = ga.iter().zip(&gb).take_while(|(x, y)| x == y).count();
    (cos, max_abs_diff(&a, &b), agree)
}

#[test]
fn quantized_weights_track_f32() {
    use nuwa::models::linear::Quantize;
    let f32_engine = Engine::load(&tiny_dir(), &LoadOptions::default()).unwrap();
    // The fixture's widths (64, 172) fill q8_0's 32-blocks except the MLP's down projection, and no
    // q4_k 256-block: there q4_k falls back to q8_0 (as llama.cpp does), so both run the q8_0 kernels.
    for q in [Quantize::Q8_0, Quantize::Q4K] {
        let e = Engine::load(&tiny_dir(), &LoadOptions { quantize: Some(q), ..LoadOptions::default() }).unwrap();
        let (cos, d, agree) = against(&e, &f32_engine);
        println!("{} on the fixture: logit cosine {cos:.6}, max |Δ| {d:.4}, greedy agrees for {agree}/8", q.name());
        assert!(cos > 0.995, "{}: cosine {cos}", q.name());
        assert!(agree >= 1, "{}: the first greedy token differs", q.name());
    }
    // q4_k's own kernels: a random-weight LLaVA whose decoder widths fill 256-blocks.
    let nuwa::bench::BenchConfig::Llava { mut config, .. } = nuwa::bench::Preset::Tiny.config() else {
        panic!("the tiny preset is a LLaVA")
    };
    config.text_config.hidden_size = 256;
    config.text_config.intermediate_size = 512;
    config.text_config.num_hidden_layers = 2;
    let run = |quantize: Option<Quantize>| {
        let mut c = config.clone();
        c.text_config.weights.quantize = quantize;
        let cfg = nuwa::bench::BenchConfig::Llava { config: c, pinpoints: None };
        let e = nuwa::bench::random_engine(
            &cfg,
            nuwa::bench::RandomWeights { seed: 7, std: 0.05 },
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let prompt = nuwa::bench::bench_prompt(3, 32000);
        e.prefill_image(&prompt, None, &Method::NONE, None).unwrap().logits.to_vec1::<f32>().unwrap()
    };
    let dense = run(None);
    let mut cosines = Vec::new();
    for q in [Quantize::Q8_0, Quantize::Q4K] {
        let got = run(Some(q));
        let cos = cosine(&got, &dense);
        let d = got.iter().zip(&dense).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        println!("{}, 256-wide random decoder: logit cosine {cos:.6}, max |Δ| {d:.4}", q.name());
        cosines.push(cos);
    }
    // Random Gaussian weights are 4-bit quantisation's hard case (≈ 11 % error per weight).
    assert!(cosines[0] > 0.999 && cosines[1] > 0.95, "cosines {cosines:?}");
    assert!(
        1.0 - cosines[1] > 4.0 * (1.0 - cosines[0]),
        "q4_k must be coarser than q8_0 (its kernels ran): {cosines:?}"
    );
}

#[test]
fn packed_linears_match_the_f32_product_in_every_dtype() {
    use candle_core::{Module, Tensor};
    use nuwa::models::linear::Linear;
    // Odd sizes: narrow last panels, input tails, row blocks that do not fill a tile, rows that do not
    // split evenly over the threads; 64 and 96 rows with 32-multiple inputs take the bf16 tile path
    // where the CPU has one. One row is the decode path.
    let shapes = [(1, 1, 1), (1, 67, 45), (3, 300, 1000), (15, 33, 70), (64, 40, 64), (96, 100, 128), (70, 32, 96)];
    for (m, n, k) in shapes {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let b = Tensor::randn(0f32, 1.0, n, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let x = Tensor::randn(0f32, 1.0, (1, m, k), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let layer = Linear::new(w.clone(), Some(b.clone())).unwrap();
            assert!(matches!(layer, Linear::Packed { .. }), "{dtype:?} weights on the CPU are packed");
            let got = layer.forward(&x).unwrap();
            assert_eq!((got.dims(), got.dtype()), ([1, m, n].as_slice(), dtype));
            let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let want = f(&x).reshape((m, k)).unwrap().matmul(&f(&w).t().unwrap()).unwrap();
            let want = want.broadcast_add(&f(&b)).unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            // Accumulated in f32 from the stored values, rounded once to the output dtype.
            let ulp = match dtype {
                DType::BF16 => 1.0 / 256.0,
                DType::F16 => 1.0 / 2048.0,
                _ => 0.0,
            };
            let scale = (k as f32).sqrt();
            for (g, w) in flat(&f(&got)).iter().zip(flat(&want)) {
                let bound = w.abs() * ulp + 1e-5 * scale;
                assert!((g - w).abs() <= bound, "{dtype:?} {m}×{n}×{k}: {g} vs {w} (bound {bound})");
            }
        }
    }
}
