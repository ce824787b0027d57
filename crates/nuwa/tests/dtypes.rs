//! Half-precision loading: the model runs in f16 and bf16 and stays close to the f32 reference.
mod common;
use candle_core::{DType, Device};
use common::*;
use nuwa::{Engine, GenerateRequest, ImageInput, LoadOptions, Method, NuwaConfig, Sampling};

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
            let req = GenerateRequest {
                prompt: QUESTION.into(),
                image: Some(ImageInput::Pixels(g("pixel_values").clone())),
                method,
                positions: None,
                sampling: Sampling::default(),
                max_new_tokens: 1,
                stop: vec![],
            };
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
