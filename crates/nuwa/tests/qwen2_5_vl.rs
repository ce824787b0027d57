//! Qwen2.5-VL against the fixture `tests/fixtures/tiny-qwen2.5-vl` (made with transformers): tokenizer and
//! prompt ids, the vision tower's window order, blocks, merger and saliency, the 3-D positions, unpruned
//! logits and greedy tokens through the KV cache.
mod common;

use candle_core::{Device, Tensor};
use common::max_abs_diff;
use nuwa::checkpoint::Checkpoint;
use nuwa::layout::Needs;
use nuwa::models::qwen2_5_vl::{self, vision, Qwen25Vl};
use nuwa::models::VisionLanguageModel;
use nuwa::prune::nuwa::{self as nw, NuwaConfig};
use nuwa::{Engine, GenerateRequest, ImageInput, LoadOptions, Method, Sampling};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

fn dir() -> PathBuf {
    common::fixtures().join("tiny-qwen2.5-vl")
}

fn golden() -> &'static Value {
    static G: OnceLock<Value> = OnceLock::new();
    G.get_or_init(|| serde_json::from_str(&std::fs::read_to_string(dir().join("golden.json")).unwrap()).unwrap())
}

fn g(name: &str) -> &'static Tensor {
    static G: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    let all = G.get_or_init(|| candle_core::safetensors::load(dir().join("golden.safetensors"), &Device::Cpu).unwrap());
    all.get(name).unwrap_or_else(|| panic!("golden tensor {name} missing"))
}

fn ints(name: &str) -> Vec<i64> {
    let t = g(name).flatten_all().unwrap();
    t.to_dtype(candle_core::DType::I64).unwrap().to_vec1::<i64>().unwrap()
}

fn ids(name: &str) -> Vec<u32> {
    ints(name).into_iter().map(|v| v as u32).collect()
}

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::load(&dir(), &LoadOptions::default()).unwrap())
}

fn model() -> &'static Qwen25Vl {
    static M: OnceLock<Qwen25Vl> = OnceLock::new();
    M.get_or_init(|| Qwen25Vl::load(&Checkpoint::open(&dir()).unwrap(), &LoadOptions::default()).unwrap())
}

/// The golden pixel values with the image's size (406×260), as a request gives them.
pub fn golden_pixels() -> ImageInput {
    ImageInput::SizedPixels { pixels: g("pixel_values").clone(), width: 406, height: 260 }
}

fn request(image: ImageInput, method: Method) -> GenerateRequest {
    GenerateRequest {
        prompt: golden()["question"].as_str().unwrap().into(),
        image: Some(image),
        method,
        positions: None,
        sampling: Sampling::default(),
        max_new_tokens: 8,
        stop: vec![],
    }
}

#[test]
fn tokenizer_checks_and_prompt_ids_match() {
    let tok = engine().tokenizer().unwrap();
    for check in golden()["tokenizer_checks"].as_array().unwrap() {
        let text = check["text"].as_str().unwrap();
        let want: Vec<u32> = check["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(text, true).unwrap(), want, "{text:?}");
    }
    let conversation = nuwa::prompt::Conversation::question(golden()["question"].as_str().unwrap(), true);
    assert_eq!(qwen2_5_vl::chat_template(&conversation), golden()["prompt"].as_str().unwrap());
    let prompt = engine().prompt(golden()["question"].as_str().unwrap(), true).unwrap();
    let n = golden()["num_image_tokens"].as_u64().unwrap() as usize;
    let mut full = prompt.prefix.clone();
    full.extend(std::iter::repeat_n(151655, n));
    full.extend(&prompt.suffix);
    assert_eq!(full, ids("input_ids"));
    assert_eq!(prompt.prefix.len() as u64, golden()["image_start"].as_u64().unwrap());
    assert_eq!(prompt.suffix.len() as u64, golden()["tokens_after_image"].as_u64().unwrap());
    assert_eq!(engine().eos_token_ids(), [151645, 151643], "eos from generation_config.json");
}

#[test]
fn vision_tower_matches_block_by_block() {
    let m = model();
    let (window_index, bounds) = vision::window_index(9, 14, 4, 2);
    assert_eq!(window_index.iter().map(|&v| v as i64).collect::<Vec<_>>(), ints("vision.window_index"));
    assert_eq!(bounds.iter().map(|&v| v as i64).collect::<Vec<_>>(), ints("vision.cu_window_seqlens"));
    let pixels = g("pixel_values");
    let d = max_abs_diff(&m.vision.patch_embed(pixels).unwrap(), g("vision.patch_embed"));
    assert!(d <= 1e-4, "patch embedding max |Δ| {d}");
    let req = vision::TowerRequest {
        block_outputs: vec![0, 7, 15, 23, 31],
        mean_of: Some(7..=23),
        saliency_block: Some(31),
        probs_per_chunk: None,
    };
    let out = m.vision.forward(pixels, 18, 28, &req).unwrap();
    for (b, t) in &out.blocks {
        let d = max_abs_diff(t, g(&format!("vision.block_out.{b}")));
        println!("block {b}: max |Δ| {d:e}");
        assert!(d <= 1e-3, "block {b} output max |Δ| {d}");
    }
    // Full attention in chunks of 37 query rows (the 504 rows do not divide evenly): the same blocks and
    // the same column sums as in one piece.
    let chunked = m
        .vision
        .forward(pixels, 18, 28, &vision::TowerRequest { probs_per_chunk: Some(4 * 504 * 37), ..req.clone() })
        .unwrap();
    assert!(max_abs_diff(&chunked.merged, &out.merged) <= 1e-5, "chunked attention changes the output");
    let (a, b) = (chunked.saliency.as_ref().unwrap(), out.saliency.as_ref().unwrap());
    assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5), "chunked column sums differ");
    let mean = out.mean.as_ref().unwrap();
    assert!(max_abs_diff(mean, g("vision.sim_mean_7_23")) <= 1e-3);
    let merged_mean = m.vision.merger.forward(mean).unwrap();
    assert!(max_abs_diff(&merged_mean, g("vision.sim_merged.window_order")) <= 1e-3);
    let raster = vision::to_raster(&merged_mean, &out.window_index).unwrap();
    assert!(max_abs_diff(&raster, g("vision.sim_merged.raster")) <= 1e-3);

    let ev = m.encode(pixels, Some((406, 260)), Needs { similarity: true }).unwrap();
    let d_embeds = max_abs_diff(&ev.features, g("vision.image_embeds"));
    assert!(d_embeds <= 1e-3, "image embeds max |Δ| {d_embeds}");
    assert!(max_abs_diff(ev.similarity.as_ref().unwrap(), g("vision.sim_merged.raster")) <= 1e-3);
    let s = Tensor::new(ev.saliency.as_ref().unwrap().mean().as_slice(), &Device::Cpu).unwrap();
    let d_s = max_abs_diff(&s, g("nuwa.saliency"));
    println!("image embeds {d_embeds:e}, saliency {d_s:e}");
    assert!(d_s <= 1e-4, "saliency max |Δ| {d_s}");
    assert_eq!((ev.layout.grids[0].rows, ev.layout.grids[0].cols), (9, 14));
}

#[test]
fn positions_logits_and_greedy_tokens_match_unpruned() {
    let e = engine();
    let req = request(golden_pixels(), Method::NONE);
    let pre = e.prefill(&req).unwrap();
    let want = ints("position_ids");
    let nuwa::layout::Positions::MRope(axes) = &pre.positions else { panic!("Qwen positions are 3-D") };
    let got: Vec<i64> = axes.iter().flatten().map(|&v| v as i64).collect();
    assert_eq!(got, want, "3-D position ids");
    let delta = ints("rope_deltas")[0];
    assert_eq!(pre.next_position as i64, 151 + delta, "first decoding position = L + rope_delta");
    let d = max_abs_diff(&pre.logits, g("unpruned.logits_last"));
    println!("unpruned logits max |Δ| {d:e}");
    assert!(d <= 2e-3, "logits max |Δ| {d}");
    let gen = e.generate(&req, &mut |_| {}).unwrap();
    assert_eq!(gen.tokens, ids("unpruned.greedy"), "greedy tokens through the KV cache");
}

const RATIOS: [&str; 3] = ["0.25", "0.5", "0.75"];

fn usizes(name: &str) -> Vec<usize> {
    ints(name).into_iter().map(|v| v as usize).collect()
}

fn keep_of(r: &str) -> nw::Keep {
    nw::Keep::Ratio(r.parse().unwrap())
}

fn run_name(r: &str, released: bool) -> String {
    format!("nuwa{r}{}", if released { "_released" } else { "" })
}

/// The prefill logits at the 32 ids the fixture stores, against their values.
fn top_logits_diff(logits: &Tensor, run: &str) -> f32 {
    let idx = Tensor::new(ids(&format!("{run}.logits_top.ids")).as_slice(), &Device::Cpu).unwrap();
    max_abs_diff(&logits.index_select(&idx, 0).unwrap(), g(&format!("{run}.logits_top.values")))
}

#[test]
fn stage1_from_golden_inputs_matches_in_both_variants() {
    for r in RATIOS {
        for released in [false, true] {
            let run = run_name(r, released);
            let ratios = keep_of(r).ratios().unwrap();
            let m = if released { "vision.sim_merged.window_order" } else { "vision.sim_merged.raster" };
            let s = g("nuwa.saliency").to_vec1::<f32>().unwrap();
            let out = nw::merged_stage1(&s, g("vision.image_embeds"), g(m), (9, 14), &ratios, 0.1).unwrap();
            assert_eq!(out.candidates, usizes(&format!("{run}.candidates")), "{run}: candidates");
            assert_eq!(out.stage1.anchors, usizes(&format!("{run}.anchors")), "{run}: anchors");
            let mask: Vec<bool> = ints(&format!("{run}.pillar_mask")).iter().map(|&v| v == 1).collect();
            assert_eq!(out.stage1.pillars, mask, "{run}: pillars");
            let d = max_abs_diff(&out.stage1.tokens, g(&format!("{run}.aggregated")));
            println!("{run}: aggregated max |Δ| {d:e}");
            assert!(d <= 1e-5, "{run}: aggregated max |Δ| {d}");
        }
    }
}

#[test]
fn nuwa_pipelines_match_at_every_keep_ratio_in_both_variants() {
    let e = engine();
    for r in RATIOS {
        for as_released in [false, true] {
            let run = run_name(r, as_released);
            let summary = &golden()["runs"][&run];
            let cfg = NuwaConfig { keep: Some(keep_of(r)), as_released, ..NuwaConfig::default() };
            let req = request(golden_pixels(), Method::Nuwa(cfg.clone()));
            let pre = e.prefill(&req).unwrap();
            let enc = pre.encoded.as_ref().unwrap();
            let slots: Vec<usize> = enc.sources.iter().map(|s| s[0]).collect();
            assert_eq!(slots, usizes(&format!("{run}.anchors")), "{run}: anchors end to end");
            let d_agg = max_abs_diff(&enc.tokens, g(&format!("{run}.aggregated")));
            assert!(d_agg <= 1e-3, "{run}: aggregated end to end max |Δ| {d_agg}");
            let nuwa::layout::Positions::MRope(axes) = &pre.positions else { panic!("3-D positions") };
            let got: Vec<i64> = axes.iter().flatten().map(|&v| v as i64).collect();
            assert_eq!(got, ints(&format!("{run}.position_ids")), "{run}: position ids");
            assert_eq!(pre.next_position, 39, "{run}: decoding continues the unpruned numbering");
            let report = pre.vision.as_ref().unwrap();
            assert_eq!(report.stage2, usizes(&format!("{run}.stage2_kept")), "{run}: stage-2 survivors");
            assert_eq!(report.k2.map(|k| k as u64), summary["k2"].as_u64(), "{run}: K2");
            let scores = report.cuts[0].scores.as_ref().expect("stage 2 records its scores");
            let d_scores = max_abs_diff(
                &Tensor::new(scores.as_slice(), &Device::Cpu).unwrap(),
                g(&format!("{run}.stage2_scores")),
            );
            assert!(d_scores <= 1e-5, "{run}: stage-2 scores max |Δ| {d_scores}");
            let d_top = top_logits_diff(&pre.logits, &run);
            assert!(d_top <= 2e-3, "{run}: top logits max |Δ| {d_top}");
            if !as_released {
                let d = max_abs_diff(&pre.logits, g(&format!("{run}.logits_last")));
                assert!(d <= 2e-3, "{run}: logits max |Δ| {d}");
            }
            let gen = e.generate(&req, &mut |_| {}).unwrap();
            assert_eq!(gen.tokens, ids(&format!("{run}.greedy")), "{run}: greedy through the ragged cache");

            let only1 = NuwaConfig { stages: nw::Stages::One, ..cfg };
            let pre1 = e.prefill(&request(golden_pixels(), Method::Nuwa(only1))).unwrap();
            assert!(pre1.vision.as_ref().unwrap().cuts.is_empty(), "{run}: stage 1 only has no cut");
            let d1 = top_logits_diff(&pre1.logits, &format!("{run}.stage1_only"));
            println!("{run}: aggregated {d_agg:e}, stage-2 scores {d_scores:e}, top logits {d_top:e}, stage-1-only top logits {d1:e}");
            assert!(d1 <= 2e-3, "{run}: stage-1-only top logits max |Δ| {d1}");
        }
    }
}

#[test]
fn keep_ratios_without_a_preset_and_token_budgets_are_refused_by_name() {
    let e = engine();
    let bad = NuwaConfig { keep: Some(nw::Keep::Ratio(0.3)), ..NuwaConfig::default() };
    let Err(err) = e.prefill(&request(golden_pixels(), Method::Nuwa(bad))) else { panic!("30 % has no preset") };
    assert_eq!(err.field(), Some("budget"), "{err}");
    let tokens = NuwaConfig { budget: 64, ..NuwaConfig::default() };
    let Err(err) = e.prefill(&request(golden_pixels(), Method::Nuwa(tokens))) else { panic!("no token budgets") };
    assert!(err.to_string().contains("keep ratio"), "{err}");
    // An explicit triple equal to the 25 % preset gives the same anchors.
    let explicit = nw::Keep::Explicit(nw::KeepRatios { stage1: 0.35, stage2: 0.42, top_n: 3 });
    let cfg = NuwaConfig { keep: Some(explicit), ..NuwaConfig::default() };
    let pre = e.prefill(&request(golden_pixels(), Method::Nuwa(cfg))).unwrap();
    let slots: Vec<usize> = pre.encoded.as_ref().unwrap().sources.iter().map(|s| s[0]).collect();
    assert_eq!(slots, usizes("nuwa0.25.anchors"));
}

#[test]
fn baselines_run_on_the_merged_grid_or_say_they_are_not_defined() {
    let e = engine();
    for (name, budget) in [
        ("fastv", 32),
        ("dart", 32),
        ("random", 32),
        ("divprune", 32),
        ("pool", 32),
        ("pdrop", 64),
        ("sparsevlm", 64),
        ("visionzip", 64),
        ("vispruner", 64),
    ] {
        let method = Method::from_name(name, budget, 0).unwrap();
        let mut req = request(golden_pixels(), method);
        req.max_new_tokens = 2;
        match e.generate(&req, &mut |_| {}) {
            Err(err) => {
                assert!(matches!(name, "visionzip" | "vispruner"), "{name}: {err}");
                assert!(err.to_string().contains("qwen2.5-vl"), "{name}: {err}");
            }
            Ok(gen) => {
                assert!(!matches!(name, "visionzip" | "vispruner"), "{name} should refuse: it needs a [CLS] token");
                assert_eq!(gen.tokens.len(), 2, "{name}");
                let v = gen.vision.unwrap();
                assert!(v.avg_vision_tokens < 126.0, "{name} pruned nothing");
            }
        }
    }
    // Position policies on 3-D positions: contiguous renumbers the kept tokens as text; stretched spreads
    // them over the image's slots and keeps each slot's (t, h, w).
    for (policy, name) in
        [(nuwa::prune::PositionPolicy::Contiguous, "contiguous"), (nuwa::prune::PositionPolicy::Stretched, "stretched")]
    {
        let mut req = request(golden_pixels(), Method::from_name("random", 32, 0).unwrap());
        req.positions = Some(policy);
        let pre = e.prefill(&req).unwrap();
        let nuwa::layout::Positions::MRope(axes) = &pre.positions else { panic!("3-D positions") };
        let vision = 15..15 + 32;
        let (t, h, w) = (&axes[0][vision.clone()], &axes[1][vision.clone()], &axes[2][vision]);
        if policy == nuwa::prune::PositionPolicy::Contiguous {
            assert!(t == h && h == w && t.windows(2).all(|p| p[1] == p[0] + 1), "{name}: running text ids");
        } else {
            assert!(t.iter().all(|&v| v == 15), "{name}: one temporal step");
            assert!(h.windows(2).all(|p| p[1] >= p[0]) && h.iter().all(|&v| (15..24).contains(&v)), "{name}: rows");
            assert!(w.iter().all(|&v| (15..29).contains(&v)), "{name}: columns");
        }
        assert_eq!(pre.next_position, *axes[0].last().unwrap() + 1, "{name}");
    }
}

#[test]
fn grounding_answers_in_the_resized_frame_map_onto_the_original_image() {
    use nuwa::eval::data::{Sample, Truth};
    use nuwa::eval::{score, Prediction, RecBoxes};
    assert_eq!(
        engine().grounding_prompt("The red car on the left"),
        "Locate red car on the left in this image and output the bbox coordinates in JSON format."
    );
    assert_eq!(
        nuwa::ground::qwen_prompt("an apple"),
        "Locate apple in this image and output the bbox coordinates in JSON format."
    );
    // Landscape (the fixture, 406×260 → 392×252) and portrait (260×406 → 252×392).
    for (w, h, answer, want) in [
        (
            406u32,
            260u32,
            r#"```json
[{"bbox_2d": [98, 63, 196, 126], "label": "red car"}]
```"#,
            [101.5, 65.0, 203.0, 130.0],
        ),
        (260, 406, "[63, 98, 126, 196]", [65.0, 101.5, 130.0, 203.0]),
    ] {
        let img = image::RgbImage::new(w, h);
        let (_, geometry) = engine().pixels(&img).unwrap();
        let found = nuwa::ground::ground_box(answer, &geometry).expect("the answer holds a box");
        for (got, want) in found.original_pixels.iter().zip(want) {
            assert!((got - want).abs() < 1e-9, "{w}×{h}: {:?} vs {want:?}", found.original_pixels);
        }
        // Eval scores that box against the COCO ground truth of the same region: IoU 1 in the original
        // frame, and the same in the harness frame (the resize has no padding).
        let truth =
            Truth::Rec { expression: "red car".into(), bbox: [want[0], want[1], want[2] - want[0], want[3] - want[1]] };
        let sample = Sample { sub: 0, id: "0".into(), prompt: String::new(), truth: truth.clone() };
        for frame in [RecBoxes::Original, RecBoxes::Padded] {
            let mut p = Prediction::new(&sample, 1, "none", answer);
            score(&mut p, &truth, &geometry, frame);
            assert!((p.iou.unwrap() - 1.0).abs() < 1e-9, "{w}×{h} {frame:?}: IoU {:?}", p.iou);
        }
        // `nuwa score rec` with the answer's pixel frame gives the same.
        let gt = [want[0] / w as f64, want[1] / h as f64, want[2] / w as f64, want[3] / h as f64];
        let resized = nuwa::models::qwen2_5_vl::processor::smart_resize(h, w, 28, 3136, 12845056).unwrap();
        let row = nuwa::score::rec::score_row_in(answer, gt, Some((resized.1 as f64, resized.0 as f64)));
        assert!((row.iou - 1.0).abs() < 1e-9, "{w}×{h}: score rec IoU {}", row.iou);
    }
}
