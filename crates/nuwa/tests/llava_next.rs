//! LLaVA-NeXT against the fixture `tests/fixtures/tiny-llava-next` (made with transformers): the anyres
//! geometry of every case in `golden.json` exact, the views' pixels, the vision tensors in the
//! decoder's layout, the prompt, unpruned logits and greedy tokens.
mod common;

use candle_core::{Device, Tensor};
use common::max_abs_diff;
use nuwa::layout::{Needs, Slot};
use nuwa::models::llava_next::anyres::{Anyres, UnpadAxis};
use nuwa::prune::nuwa::{self as nw, Budgets, NuwaConfig};
use nuwa::{Engine, GenerateRequest, ImageInput, LoadOptions, Method, Sampling};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

fn dir() -> PathBuf {
    common::fixtures().join("tiny-llava-next")
}

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("golden.json")).unwrap()).unwrap()
}

fn g(name: &str) -> &'static Tensor {
    static G: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    let all = G.get_or_init(|| candle_core::safetensors::load(dir().join("golden.safetensors"), &Device::Cpu).unwrap());
    all.get(name).unwrap_or_else(|| panic!("golden tensor {name} missing"))
}

fn ids(name: &str) -> Vec<u32> {
    g(name).to_vec1::<i64>().unwrap().into_iter().map(|v| v as u32).collect()
}

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::load(&dir(), &LoadOptions::default()).unwrap())
}

/// The golden pixel values with the image's size (480×307), as a request gives them.
fn golden_pixels() -> ImageInput {
    ImageInput::SizedPixels { pixels: g("pixel_values").clone(), width: 480, height: 307 }
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

const PINPOINTS: [[u32; 2]; 5] = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]];

fn pair<T: TryFrom<u64>>(v: &Value) -> (T, T)
where
    T::Error: std::fmt::Debug,
{
    let n = |i: usize| T::try_from(v[i].as_u64().unwrap()).unwrap();
    (n(0), n(1))
}

#[test]
fn anyres_geometry_matches_every_golden_case() {
    let g = golden();
    let cases = g["geometry_cases"].as_array().unwrap();
    assert_eq!(cases.len(), 28);
    for c in cases {
        let (w, h): (u32, u32) = pair(&c["image_size_wh"]);
        let a = Anyres::plan(w, h, &PINPOINTS, 336, 24).unwrap();
        let at = format!("{w}×{h}");
        assert_eq!(a.best_hw, pair(&c["best_resolution_hw"]), "{at}: best resolution");
        assert_eq!((a.rows, a.cols), pair(&c["crop_grid_rows_cols"]), "{at}: crop grid");
        assert_eq!(a.resized_hw, pair(&c["resized_hw"]), "{at}: resize");
        let pad: Vec<u32> =
            c["pad_top_bottom_left_right"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(a.pad.to_vec(), pad, "{at}: padding");
        assert_eq!(a.stitched_hw, pair(&c["stitched_hw"]), "{at}: stitched grid");
        let axis = if c["unpad_axis"] == "rows" { UnpadAxis::Rows } else { UnpadAxis::Cols };
        assert_eq!(a.unpad_axis, axis, "{at}: unpad axis");
        assert_eq!(a.unpad_new_size as u64, c["unpad_new_size"].as_u64().unwrap(), "{at}: unpadded size");
        assert_eq!(a.unpad_each_side as u64, c["unpad_each_side"].as_u64().unwrap(), "{at}: cut per side");
        assert_eq!(a.unpadded_hw, pair(&c["unpadded_hw"]), "{at}: unpadded grid");
        assert_eq!(a.num_image_tokens(576) as u64, c["num_image_tokens"].as_u64().unwrap(), "{at}: N_img");
    }
    // The fixture image itself.
    let a = Anyres::plan(480, 307, &PINPOINTS, 336, 24).unwrap();
    assert_eq!((a.views(), a.num_image_tokens(576)), (3, g["num_image_tokens"].as_u64().unwrap() as usize));
}

#[test]
fn stitched_indices_follow_the_crops_row_major() {
    // 480×307: two crops side by side, 24×48 stitched, columns 5…42 kept.
    let a = Anyres::plan(480, 307, &PINPOINTS, 336, 24).unwrap();
    assert_eq!(a.unpadded_hw, (24, 38));
    assert_eq!(a.stitched_index(0), 5);
    assert_eq!(a.stitched_index(38), 48 + 5, "the next row starts one stitched row down");
    // Stitched column 30 of row 2 is column 6 of the second crop.
    assert_eq!(a.crop_patch(2, 30, 24), (1, 2 * 24 + 6));
    // 260×500: two crops stacked; stitched row 30 is row 6 of the lower crop.
    let tall = Anyres::plan(260, 500, &PINPOINTS, 336, 24).unwrap();
    assert_eq!((tall.rows, tall.cols), (2, 1));
    assert_eq!(tall.crop_patch(30, 3, 24), (1, 6 * 24 + 3));
    assert_eq!(tall.stitched_index(0), 24, "one row cut at the top");
}

#[test]
fn own_preprocessing_matches_the_golden_pixel_values() {
    let img = nuwa::preprocess::load_image(&dir().join("image.png")).unwrap();
    let (pixels, geometry) = engine().pixels(&img).unwrap();
    let want = g("pixel_values").squeeze(0).unwrap();
    assert_eq!(pixels.dims(), want.dims());
    assert_eq!((geometry.width, geometry.height), (480, 307));
    let diff = (&pixels - &want).unwrap().abs().unwrap();
    let mean = diff.mean_all().unwrap().to_scalar::<f32>().unwrap();
    let max = diff.flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    println!("pixel values: mean |Δ| {mean:e}, max |Δ| {max:e}");
    assert!(mean <= 0.01, "mean |Δ| {mean}");
}

#[test]
fn vision_tensors_are_laid_out_as_the_decoder_sees_them() {
    let e = engine();
    let pixels = g("pixel_values").squeeze(0).unwrap();
    let ev = e.encode_vision(&pixels, Some((480, 307)), Needs { similarity: true }).unwrap();
    let n_img = golden()["num_image_tokens"].as_u64().unwrap() as usize;
    assert_eq!(ev.layout.len(), n_img);
    assert_eq!(ev.layout.grids.len(), 2);
    assert_eq!((ev.layout.grids[1].rows, ev.layout.grids[1].cols), (24, 38));
    // The slot of local (ρ, c) is 576 + ρ(W'+1) + c; of row ρ's newline 576 + ρ(W'+1) + W'.
    assert_eq!(ev.layout.slots[576 + 39 + 5], Slot::Patch { grid: 1, row: 1, col: 5 });
    assert_eq!(ev.layout.slots[576 + 39 + 38], Slot::Newline { grid: 1, row: 1 });
    let local: Vec<u32> = ev
        .layout
        .slots
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, Slot::Patch { grid: 1, .. }))
        .map(|(i, _)| i as u32)
        .collect();
    assert_eq!(local.len(), 912);
    let pick = |t: &Tensor, rows: &[u32]| t.index_select(&Tensor::new(rows, &Device::Cpu).unwrap(), 0).unwrap();
    let base: Vec<u32> = (0..576).collect();
    let d_local = max_abs_diff(&pick(&ev.features, &local), g("local.features"));
    let want_base = g("vision.hidden_states.23").get(0).unwrap().narrow(0, 1, 576).unwrap();
    let d_base = max_abs_diff(&pick(&ev.features, &base), &want_base);
    let sim = ev.similarity.as_ref().unwrap();
    let d_sim = max_abs_diff(&pick(sim, &local), g("local.similarity_features"))
        .max(max_abs_diff(&pick(sim, &base), &g("vision.similarity_features").get(0).unwrap()));
    let saliency = &ev.saliency.as_ref().unwrap().summed;
    let at = |rows: &[u32]| {
        Tensor::new(rows.iter().map(|&r| saliency[r as usize]).collect::<Vec<f32>>(), &Device::Cpu).unwrap()
    };
    let d_sal = max_abs_diff(&at(&local), g("local.saliency"))
        .max(max_abs_diff(&at(&base), &g("vision.cls_attention").get(0).unwrap()));
    println!("features base {d_base:e} local {d_local:e}; similarity {d_sim:e}; saliency {d_sal:e}");
    assert!(d_base <= 1e-3 && d_local <= 1e-3 && d_sim <= 1e-3 && d_sal <= 1e-3);
    // Newline slots carry nothing from the vision tower.
    let newlines: Vec<u32> = (0..24).map(|r| 576 + r * 39 + 38).collect();
    assert_eq!(pick(&ev.features, &newlines).abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);

    // Projected, with the newline vector at each row end: the packed sequence transformers feeds.
    let encoded = e.reduce(&ev, &Method::NONE).unwrap();
    let d = max_abs_diff(&encoded.tokens, g("unpruned.image_features"));
    println!("packed image features max |Δ| {d:e}");
    assert!(d <= 1e-3, "packed image features max |Δ| {d}");
}

#[test]
fn prompt_ids_and_unpruned_generation_match() {
    let e = engine();
    let prompt = e.prompt(golden()["question"].as_str().unwrap(), true).unwrap();
    assert_eq!(prompt.prefix, ids("input_ids.prefix"));
    assert_eq!(prompt.suffix, ids("input_ids.suffix"));
    let req = request(golden_pixels(), Method::NONE);
    let pre = e.prefill(&req).unwrap();
    let d = max_abs_diff(&pre.logits, g("unpruned.logits_last"));
    println!("unpruned last-position logits max |Δ| {d:e}");
    assert!(d <= 2e-3, "logits max |Δ| {d}");
    assert_eq!(pre.next_position, 1561);
    assert_eq!(pre.positions.as_linear().unwrap(), ids("unpruned.position_ids").as_slice());
    let gen = e.generate(&req, &mut |_| {}).unwrap();
    assert_eq!(gen.tokens, ids("unpruned.greedy"));
    // The same from the image file, through our own preprocessing.
    let own = e.generate(&request(ImageInput::Path(dir().join("image.png")), Method::NONE), &mut |_| {}).unwrap();
    assert_eq!(own.tokens, ids("unpruned.greedy"));
}

fn usizes(name: &str) -> Vec<usize> {
    g(name).to_vec1::<i64>().unwrap().into_iter().map(|v| v as usize).collect()
}

fn flags(name: &str) -> Vec<bool> {
    g(name).to_dtype(candle_core::DType::I64).unwrap().to_vec1::<i64>().unwrap().into_iter().map(|v| v != 0).collect()
}

/// Stage 1 from the golden CLIP tensors alone, per grid: anchors, pillars and aggregated features.
fn check_stage1_from_golden_tensors(budget: usize) {
    let run = format!("nuwa{budget}");
    let spec = &golden()["runs"][&run];
    let (k1, top_n) = nw::anyres_budgets(budget);
    assert_eq!((k1 as u64, top_n as u64), (spec["k1"].as_u64().unwrap(), spec["top_n_table"].as_u64().unwrap()));
    let t = k1 / 3;
    let cfg = NuwaConfig { budget, pillar_quantile: Some(nw::ANYRES_PILLAR_QUANTILE), ..NuwaConfig::default() };
    let base_x = g("vision.hidden_states.23").get(0).unwrap().narrow(0, 1, 576).unwrap();
    let base_m = g("vision.similarity_features").get(0).unwrap();
    let base_s = g("vision.cls_attention").get(0).unwrap().to_vec1::<f32>().unwrap();
    let local_s = g("local.saliency").to_vec1::<f32>().unwrap();
    for (grid, s, x, m, hw, k) in [
        ("global", &base_s, &base_x, &base_m, (24, 24), t),
        ("local", &local_s, g("local.features"), g("local.similarity_features"), (24, 38), 2 * t),
    ] {
        let b = Budgets { k1: k, k2: None, top_n };
        let out = nw::stage1(s, x, m, hw, &b, &cfg).unwrap();
        assert_eq!(out.anchors, usizes(&format!("{run}.{grid}_anchors")), "{run}: {grid} anchors");
        assert_eq!(out.pillars, flags(&format!("{run}.{grid}_is_pillar")), "{run}: {grid} pillars");
        let d = max_abs_diff(&out.tokens, g(&format!("{run}.{grid}_aggregated")));
        println!("{run}: {grid} aggregated from the golden CLIP tensors max |Δ| {d:e}");
        assert!(d <= 1e-4, "{run}: {grid} aggregated max |Δ| {d}");
    }
}

/// The whole pipeline from the golden pixel values, then from the image file.
fn check_pipeline(budget: usize) {
    let e = engine();
    let run = format!("nuwa{budget}");
    let spec = &golden()["runs"][&run];
    let method = Method::Nuwa(NuwaConfig { budget, ..NuwaConfig::default() });
    let req = request(golden_pixels(), method.clone());
    let pre = e.prefill(&req).unwrap();
    let enc = pre.encoded.as_ref().unwrap();
    let slots: Vec<usize> = enc.sources.iter().map(|s| s[0]).collect();
    assert_eq!(slots, usizes(&format!("{run}.visual_slot")), "{run}: visual slots");
    assert_eq!(slots.len() as u64, spec["n_v"].as_u64().unwrap());
    let kinds: Vec<usize> = slots
        .iter()
        .map(|&s| match enc.layout.slots[s] {
            Slot::Patch { grid: 0, .. } => 0,
            Slot::Patch { .. } => 1,
            _ => 2,
        })
        .collect();
    assert_eq!(kinds, usizes(&format!("{run}.visual_kind")), "{run}: visual kinds");
    let pillars = spec["global"]["pillars"].as_u64().unwrap() + spec["local"]["pillars"].as_u64().unwrap();
    assert_eq!(enc.pillars.len() as u64, pillars, "{run}: pillar count");
    let d_embeds = max_abs_diff(&enc.tokens, g(&format!("{run}.visual_embeds")));
    assert!(d_embeds <= 1e-3, "{run}: visual embeddings max |Δ| {d_embeds}");
    assert_eq!(pre.positions.as_linear().unwrap(), ids(&format!("{run}.position_ids")).as_slice(), "{run}: positions");
    assert_eq!(pre.next_position, 1561);
    let report = pre.vision.as_ref().unwrap();
    let want_survivors: Vec<usize> = usizes(&format!("{run}.stage2_kept")).iter().map(|&i| slots[i]).collect();
    assert_eq!(report.stage2, want_survivors, "{run}: stage-2 survivors");
    assert_eq!(report.k2.map(|k| k as u64), spec["k2"].as_u64());
    let d_logits = max_abs_diff(&pre.logits, g(&format!("{run}.logits_last")));
    assert!(d_logits <= 2e-3, "{run}: logits max |Δ| {d_logits}");

    let prompt = e.prompt(golden()["question"].as_str().unwrap(), true).unwrap();
    let only1 = e.prefill_encoded(&prompt, pre.encoded.clone(), &Method::NONE).unwrap();
    let d_only1 = max_abs_diff(&only1.logits, g(&format!("{run}.stage1_only.logits_last")));
    assert!(d_only1 <= 2e-3, "{run}: stage-1-only logits max |Δ| {d_only1}");
    let greedy1 = e.generate_from(only1, &Sampling::default(), 8, &mut |_| {}).unwrap();
    assert_eq!(greedy1.tokens, ids(&format!("{run}.stage1_only.greedy")), "{run}: stage-1-only greedy");
    println!("{run}: visual embeddings {d_embeds:e}, logits {d_logits:e}, stage-1-only logits {d_only1:e}");

    let gen = e.generate(&req, &mut |_| {}).unwrap();
    assert_eq!(gen.tokens, ids(&format!("{run}.greedy")), "{run}: greedy through the ragged cache");
    let own = e.generate(&request(ImageInput::Path(dir().join("image.png")), method), &mut |_| {}).unwrap();
    assert_eq!(own.tokens, ids(&format!("{run}.greedy")), "{run}: greedy from the image file");
}

#[test]
fn nuwa_160_matches_the_intended_next_behaviour() {
    check_stage1_from_golden_tensors(160);
    check_pipeline(160);
}

#[test]
fn nuwa_320_matches_the_intended_next_behaviour() {
    check_stage1_from_golden_tensors(320);
    check_pipeline(320);
}

#[test]
fn nuwa_640_keeps_every_local_patch_once_raised() {
    check_stage1_from_golden_tensors(640);
    check_pipeline(640);
}

#[test]
fn baselines_run_on_the_next_layout_or_say_they_are_not_defined() {
    let e = engine();
    let weights = candle_core::safetensors::load(dir().join("model.safetensors"), &Device::Cpu).unwrap();
    let newline = weights["image_newline"].to_dtype(candle_core::DType::F32).unwrap();
    let pixels = g("pixel_values").squeeze(0).unwrap();
    for (name, budget) in [
        ("fastv", 160),
        ("dart", 160),
        ("random", 160),
        ("divprune", 160),
        ("pdrop", 128),
        ("sparsevlm", 128),
        ("visionzip", 160),
        ("vispruner", 160),
        ("pool", 160),
    ] {
        let method = Method::from_name(name, budget, 0).unwrap();
        let mut req = request(golden_pixels(), method.clone());
        req.max_new_tokens = 2;
        match e.generate(&req, &mut |_| {}) {
            Err(err) => {
                assert!(matches!(name, "visionzip" | "vispruner" | "pool"), "{name}: {err}");
                let msg = err.to_string();
                assert!(msg.contains(name) && msg.contains("not defined for llava-next"), "{msg}");
            }
            Ok(gen) => {
                assert!(!matches!(name, "visionzip" | "vispruner" | "pool"), "{name} should refuse");
                assert_eq!(gen.tokens.len(), 2, "{name}");
                let v = gen.vision.unwrap();
                assert!(v.avg_vision_tokens < 1512.0, "{name} pruned nothing");
                assert_eq!(v.grids, [[24, 24], [24, 38]]);
                // Every newline a method keeps enters the decoder as the checkpoint's newline vector.
                let enc = e.encode_image(&pixels, Some((480, 307)), &method).unwrap();
                for (i, s) in enc.sources.iter().enumerate() {
                    if let [slot] = s[..] {
                        if matches!(enc.layout.slots[slot], Slot::Newline { .. }) {
                            let d = max_abs_diff(&enc.tokens.get(i).unwrap(), &newline);
                            assert!(d == 0.0, "{name}: newline token {i} differs by {d}");
                        }
                    }
                }
            }
        }
    }
}

/// The fixture with `edit` applied to its config.json (weights and tokenizer linked, not copied).
fn fixture_with_config(name: &str, edit: impl Fn(&mut Value)) -> PathBuf {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("next-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    for f in ["model.safetensors", "tokenizer.json", "preprocessor_config.json", "generation_config.json"] {
        std::os::unix::fs::symlink(dir().join(f), out.join(f)).unwrap();
    }
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(dir().join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(out.join("config.json"), config.to_string()).unwrap();
    out
}

#[test]
fn mistral_based_checkpoints_get_the_inst_template_and_their_window() {
    use nuwa::models::llava_next::processor::mistral_inst;
    use nuwa::prompt::{Conversation, Message, Part, Role};
    let q = "What is shown in this image?";
    // transformers' documented prompt for llava-v1.6-mistral-7b-hf.
    assert_eq!(mistral_inst(&Conversation::question(q, true)), "[INST] <image>\nWhat is shown in this image? [/INST]");
    let turn = |role, text: &str| Message { role, parts: vec![Part::Text(text.into())] };
    let chat = Conversation {
        messages: vec![
            turn(Role::System, "Be brief."),
            Message { role: Role::User, parts: vec![Part::Image, Part::Text("What is it?".into())] },
            turn(Role::Assistant, "A cat."),
            turn(Role::User, "Which colour?"),
        ],
    };
    assert_eq!(
        mistral_inst(&chat),
        "[INST] Be brief.\n\n<image>\nWhat is it? [/INST] A cat.</s>[INST] Which colour? [/INST]"
    );

    // The fixture's networks under a Mistral text config: the template follows, and so does the window.
    let model = fixture_with_config("mistral", |c| {
        c["text_config"]["model_type"] = "mistral".into();
        c["text_config"]["sliding_window"] = 1000.into();
    });
    let e = Engine::load(&model, &LoadOptions::default()).unwrap();
    let p = e.prompt(q, true).unwrap();
    let tok = e.tokenizer().unwrap();
    assert_eq!(p.prefix[0], 1, "BOS first");
    assert_eq!(tok.decode(&p.prefix).unwrap().trim(), "[INST]");
    assert_eq!(tok.decode(&p.suffix).unwrap().trim(), "What is shown in this image? [/INST]");
    // 1512 image tokens do not fit a 1000-token window: refused, not attended past the window.
    let Err(err) = e.generate(&request(golden_pixels(), Method::NONE), &mut |_| {}) else {
        panic!("1512 image tokens were attended within a 1000-token window");
    };
    assert!(err.to_string().contains("1000"), "{err}");

    let other = fixture_with_config("qwen", |c| c["text_config"]["model_type"] = "qwen2".into());
    let err = Engine::load(&other, &LoadOptions::default()).err().expect("refused").to_string();
    assert!(err.contains("text_config.model_type") && err.contains("qwen2") && err.contains("mistral"), "{err}");
}

#[test]
fn the_crop_grid_covers_the_image_to_within_a_patch() {
    for c in golden()["geometry_cases"].as_array().unwrap() {
        let (w, h): (u32, u32) = pair(&c["image_size_wh"]);
        let a = Anyres::plan(w, h, &PINPOINTS, 336, 24).unwrap();
        let [x0, y0, x1, y1] = a.unpadded_window(w, h, 336, 24);
        let (rows, cols) = a.unpadded_hw;
        let (cw, ch) = ((x1 - x0) / cols as f64, (y1 - y0) / rows as f64);
        let at = format!("{w}×{h}: window {:?}, cell {cw:.2}×{ch:.2}", [x0, y0, x1, y1]);
        // Unpadding keeps whole patches, so each edge lands within a patch of the image's edge.
        for (edge, want, cell) in [(x0, 0.0, cw), (x1, w as f64, cw), (y0, 0.0, ch), (y1, h as f64, ch)] {
            assert!((edge - want).abs() <= cell, "{at}: edge {edge} vs {want}");
        }
        // The resize keeps the aspect ratio, so patches stay square on the image.
        assert!((cw / ch - 1.0).abs() < 0.02, "{at}: patches are not square");
    }
}

#[test]
fn overlay_draws_the_crop_grid_over_the_picture_and_the_base_grid_beside_it() {
    use nuwa::overlay::{self, blend, palette, DROP_ALPHA, FILL_ALPHA};
    let path = dir().join("image.png");
    let method = Method::Nuwa(NuwaConfig { budget: 160, ..NuwaConfig::default() });
    let pre = engine().prefill(&request(ImageInput::Path(path.clone()), method)).unwrap();
    let (enc, report) = (pre.encoded.as_ref().unwrap(), pre.vision.as_ref().unwrap());
    let original = nuwa::preprocess::load_image(&path).unwrap();
    let drawn = overlay::draw(&original, enc, report, false, None).unwrap();
    let gap = 480 / 100;
    assert_eq!(drawn.image.dimensions(), (2 * 480 + gap, 307), "two panels side by side");
    let legend = drawn.legend.expect("a 480×307 picture has room for the legend");
    // The centre pixel of a slot's patch in its panel: crop grid (the larger) first, base view second.
    let centre = |slot: usize| -> Option<(u32, u32, u32)> {
        let Slot::Patch { grid, row, col } = enc.layout.slots[slot] else { return None };
        let g = enc.layout.grids[grid];
        let [x0, y0, x1, y1] = enc.windows[grid];
        let x = x0 + (col as f64 + 0.5) * (x1 - x0) / g.cols as f64;
        let y = y0 + (row as f64 + 0.5) * (y1 - y0) / g.rows as f64;
        let (x, y) = (x.floor() as u32, y.floor() as u32);
        let clear =
            x < 480 && y < 307 && y > 40 && !(x >= legend[0] && x < legend[2] && y >= legend[1] && y < legend[3]);
        clear.then_some((x, y, if grid == 1 { 0 } else { 480 + gap }))
    };
    let mut seen = [0usize; 3];
    for slot in 0..enc.layout.len() {
        let Some((x, y, offset)) = centre(slot) else { continue };
        let want = if enc.pillars.contains(&slot) {
            seen[0] += usize::from(offset > 0);
            seen[1] += usize::from(offset == 0);
            blend(*original.get_pixel(x, y), palette::PILLAR, FILL_ALPHA)
        } else if report.stage1.contains(&slot) {
            blend(*original.get_pixel(x, y), palette::COLLECTOR, FILL_ALPHA)
        } else {
            seen[2] += 1;
            blend(*original.get_pixel(x, y), palette::DROPPED, DROP_ALPHA)
        };
        assert_eq!(*drawn.image.get_pixel(x + offset, y), want, "slot {slot} ({:?})", enc.layout.slots[slot]);
    }
    assert!(seen.iter().all(|&n| n > 0), "pillars on both grids and dropped patches were checked: {seen:?}");
    let heat = overlay::draw(&original, enc, report, true, None).unwrap();
    assert_eq!(heat.image.dimensions(), drawn.image.dimensions());
}
