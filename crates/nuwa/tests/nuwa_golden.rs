//! Nüwa against the released reference: the synthetic stage-1 cases and the tiny LLaVA at 64/128/192.
mod common;
use candle_core::Device;
use common::*;
use nuwa::prune::nuwa::{self as nw, Budgets, NuwaConfig};
use nuwa::{GenerateRequest, ImageInput, Method, Sampling};

#[test]
fn stage1_synthetic_cases_match_reference() {
    let dir = fixtures().join("stage1");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("stage1_cases.json")).unwrap()).unwrap();
    let t = candle_core::safetensors::load(dir.join("stage1_cases.safetensors"), &Device::Cpu).unwrap();
    let get = |c: usize, k: &str| t[&format!("case{c}.{k}")].clone();
    for case in cases.as_array().unwrap() {
        let c = case["case"].as_u64().unwrap() as usize;
        let grid = (case["grid"][0].as_u64().unwrap() as usize, case["grid"][1].as_u64().unwrap() as usize);
        let cfg = NuwaConfig {
            distance: case["distance"].as_f64().unwrap(),
            pillar_quantile: case["quantile"].as_f64(),
            ..NuwaConfig::default()
        };
        let budgets = Budgets {
            k1: case["k"].as_u64().unwrap() as usize,
            k2: None,
            top_n: case["top_n"].as_u64().unwrap() as usize,
        };
        let saliency = get(c, "salience").to_vec1::<f32>().unwrap();
        let out = nw::stage1(&saliency, &get(c, "feat_agg"), &get(c, "feat_sim"), grid, &budgets, &cfg).unwrap();
        let anchors: Vec<usize> = get(c, "anchors").to_vec1::<i64>().unwrap().into_iter().map(|v| v as usize).collect();
        assert_eq!(out.anchors, anchors, "case {c}: anchors");
        let pillars: Vec<bool> = get(c, "pillars").to_vec1::<u8>().unwrap().into_iter().map(|v| v != 0).collect();
        assert_eq!(out.pillars, pillars, "case {c}: pillars");
        let d = max_abs_diff(&out.tokens, &get(c, "tokens"));
        assert!(d <= 1e-4, "case {c}: tokens max |Δ| {d}");
    }
}

fn request(budget: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: QUESTION.into(),
        image: Some(ImageInput::Pixels(g("pixel_values").clone())),
        method: Method::Nuwa(NuwaConfig { budget, ..NuwaConfig::default() }),
        positions: None,
        sampling: Sampling::default(),
        max_new_tokens: 8,
        stop: vec![],
    }
}

fn check_budget(budget: usize) {
    let e = engine();
    let run = format!("nuwa{budget}");
    let req = request(budget);
    let pre = e.prefill(&req).unwrap();
    let enc = pre.encoded.as_ref().unwrap();
    let report = pre.vision.as_ref().unwrap();
    let spec = &golden_json()["runs"][&run];

    assert_eq!(enc.kept, usizes(&format!("{run}.anchors")), "{run}: anchors");
    assert_eq!(report.k1 as u64, spec["k1"].as_u64().unwrap());
    assert_eq!(report.k2.map(|k| k as u64), spec["k2"].as_u64());
    assert_eq!(enc.pillars.len() as u64, spec["pillars"].as_u64().unwrap(), "{run}: pillar count");
    let d_agg = max_abs_diff(&enc.features, g(&format!("{run}.aggregated")));
    let d_proj = max_abs_diff(&enc.tokens, g(&format!("{run}.projected")));
    assert!(d_agg <= 1e-3, "{run}: aggregated max |Δ| {d_agg}");
    assert!(d_proj <= 1e-4, "{run}: projected max |Δ| {d_proj}");
    assert_eq!(pre.positions, linear_positions(&format!("{run}.position_ids")), "{run}: position ids");
    assert_eq!(report.stage2, usizes(&format!("{run}.stage2_kept")), "{run}: stage-2 survivors");
    let d_logits = max_abs_diff(&pre.logits, g(&format!("{run}.logits_last")));
    assert!(d_logits <= 2e-3, "{run}: logits max |Δ| {d_logits}");

    // Stage 1 alone: the same anchors with no cut in the decoder.
    let prompt = e.prompt(QUESTION, true).unwrap();
    let only1 = e.prefill_encoded(&prompt, pre.encoded.clone(), &Method::NONE).unwrap();
    let d_only1 = max_abs_diff(&only1.logits, g(&format!("{run}.stage1_only.logits_last")));
    assert!(d_only1 <= 2e-3, "{run}: stage-1-only logits max |Δ| {d_only1}");
    println!("{run}: aggregated {d_agg:e}, projected {d_proj:e}, logits {d_logits:e}, stage-1-only logits {d_only1:e}");

    let gen = e.generate(&req, &mut |_| {}).unwrap();
    assert_eq!(gen.tokens, ids(&format!("{run}.greedy")), "{run}: greedy tokens through the ragged cache");
}

#[test]
fn tiny_llava_budget_64() {
    check_budget(64);
}

#[test]
fn tiny_llava_budget_128() {
    check_budget(128);
}

#[test]
fn tiny_llava_budget_192() {
    check_budget(192);
}

#[test]
fn ragged_cache_after_cut() {
    let pre = engine().prefill(&request(64)).unwrap();
    let lens = pre.cache.layer_lengths();
    let (p, s) = (35, 14);
    assert!(lens[..16].iter().all(|&l| l == p + 112 + s), "{lens:?}");
    assert!(lens[16..].iter().all(|&l| l == p + 16 + s), "{lens:?}");
    assert_eq!(pre.next_position as usize, p + 576 + s);
}

#[test]
fn one_vision_pass_serves_every_configuration() {
    let e = engine();
    let shared = e.encode_vision(g("pixel_values"), None, nuwa::layout::Needs { similarity: true }).unwrap();
    for method in [
        Method::NONE,
        Method::Nuwa(NuwaConfig { budget: 64, ..NuwaConfig::default() }),
        Method::Nuwa(NuwaConfig { budget: 192, ..NuwaConfig::default() }),
    ] {
        let reused = e.reduce(&shared, &method).unwrap();
        let direct = e.encode_image(g("pixel_values"), None, &method).unwrap();
        assert_eq!(reused.kept, direct.kept);
        assert_eq!(max_abs_diff(&reused.tokens, &direct.tokens), 0.0, "{method:?}");
    }
}
