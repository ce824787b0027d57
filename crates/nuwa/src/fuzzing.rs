//! The bodies of the fuzz targets in `fuzz/` (one function per parser of untrusted bytes), shared with
//! the corpus replay test so that CI runs every committed input through the same checks.
//!
//! Each function accepts any bytes: returning is a pass, a panic (a failed invariant included) a bug.

use crate::checkpoint::{check_safetensors_header, Checkpoint};
use crate::eval::data::{samples_of, Truth};
use crate::eval::Task;
use crate::models::llava::processor::{preprocess, CropSize, PreprocessConfig, Size};
use crate::models::llava::Config;
use crate::models::llava_next::Anyres;
use crate::preprocess::{decode_image_within, expand_to_square, resize, resize_padded, Resample};
use crate::score::{choice, rec};
use std::path::Path;

/// Decoded size limit: large enough for every decoder path, small enough to keep executions fast.
pub const IMAGE_MAX_PIXELS: u64 = 4 << 20;

/// Image bytes → decode (pixel limit) → LLaVA-1.5's preprocessing (tiny-llava's config: 336 px).
pub fn image(data: &[u8]) {
    let Ok(img) = decode_image_within(data, "fuzz input", IMAGE_MAX_PIXELS) else { return };
    let (w, h) = img.dimensions();
    assert!(w > 0 && h > 0 && w as u64 * h as u64 <= IMAGE_MAX_PIXELS, "decoded {w}x{h} past the limit");
    let cfg = PreprocessConfig {
        size: Size::ShortestEdge(336),
        crop_size: CropSize { height: 336, width: 336 },
        ..PreprocessConfig::default()
    };
    let out = preprocess(&img, &cfg);
    assert_eq!((out.width, out.height, out.pixels.len()), (336, 336, 3 * 336 * 336));
    assert!(out.pixels.iter().all(|v| v.is_finite()));
    assert_eq!(out.geometry.side, w.max(h));
    // Padded resizing never builds the square; where building it is cheap, both must agree bit for bit.
    if w.max(h) <= 256 {
        let color = cfg.pad_color();
        let (square, _) = expand_to_square(&img, color);
        let side = w.max(h);
        // Small outputs keep executions fast (336² ran above); they shrink, stretch and keep each axis.
        for (ow, oh) in [(side, side / 2 + 1), (side / 3 + 1, side), (5, 3), (side.min(40) * 2 + 1, 7)] {
            for filter in [Resample::Bicubic, Resample::Bilinear] {
                let padded = resize_padded(&img, color, ow, oh, filter);
                assert!(padded == resize(&square, ow, oh, filter), "{w}x{h} to {ow}x{oh} with {filter:?}");
            }
        }
    }
}

/// A whole safetensors file → the checkpoint's header check. When the safetensors crate (which checks
/// more) accepts the file too, both must see the same tensors, and candle must convert them without panicking.
pub fn safetensors_header(data: &[u8]) {
    let Ok(mut ours) = check_safetensors_header(data, data.len() as u64, Path::new("fuzz.safetensors")) else {
        return;
    };
    let Ok(theirs) = safetensors::SafeTensors::deserialize(data) else { return };
    let mut names: Vec<String> = theirs.names().into_iter().map(str::to_owned).collect();
    names.sort();
    ours.sort();
    assert_eq!(ours, names, "the header check and the loader see different tensors");
    let _ = candle_core::safetensors::load_buffer(data, &candle_core::Device::Cpu);
}

/// `config.json` and `preprocessor_config.json` text → family detection, LLaVA config validation and
/// the layer trimming benchmarks use, LLaVA-NeXT's config and anyres plan; and the preprocessor config
/// with small images through it.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let ckpt = Checkpoint {
        dir: "fuzz".into(),
        config_path: "fuzz/config.json".into(),
        config_text: text.to_owned(),
        weight_files: Vec::new(),
        tensor_names: Default::default(),
        tokenizer_file: "fuzz/tokenizer.json".into(),
        preprocessor_file: None,
        eos_token_ids: Vec::new(),
    };
    let _ = crate::models::detect(&ckpt);
    if let Ok(cfg) = Config::from_json(text) {
        let layer = cfg.feature_layer().expect("from_json checked the feature layer");
        assert!((1..=cfg.vision_config.num_hidden_layers).contains(&layer));
        let (text_layers, vision_layers) = (cfg.text_config.num_hidden_layers, cfg.vision_config.num_hidden_layers);
        for trim in [(Some(2), Some(2)), (Some(text_layers), Some(3)), (None, Some(vision_layers.saturating_sub(1)))] {
            let mut short = cfg.clone();
            if short.trim(trim.0, trim.1).is_ok() {
                // What loading computes next: the trimmed encoder must still feed the projector.
                short.feature_layer().expect("a trimmed config keeps a valid feature layer");
            }
        }
    }
    if let Ok(next) = crate::models::llava_next::Config::from_json(text) {
        // LLaVA-NeXT's anyres plan, as loading and every request compute it, for extreme aspect ratios.
        let v = &next.llava.vision_config;
        for (w, h) in [(500, 375), (4096, 1), (1, 4096), (337, 336)] {
            let Ok(plan) = Anyres::plan(w, h, &next.pinpoints, v.image_size as u32, v.grid_side()) else { continue };
            // A strip can keep no local rows at all (as in transformers); what it keeps lies in the grid.
            let (rows, cols) = plan.unpadded_hw;
            if let Some(last) = (rows * cols).checked_sub(1) {
                let at = plan.stitched_index(last);
                assert!(at < plan.stitched_hw.0 * plan.stitched_hw.1, "{w}x{h}: {at} outside {plan:?}");
            }
        }
    }
    if let Ok(pre) = serde_json::from_str::<PreprocessConfig>(text) {
        // Output sizes come from the config, which may ask for gigapixels: only small ones are run.
        let small = |(w, h): (u32, u32)| w as u64 * h as u64 <= 1 << 16;
        let resized = match pre.size {
            Size::ShortestEdge(n) => (n, n),
            Size::Exact { height, width } => (width, height),
        };
        let crop = (pre.crop_size.width, pre.crop_size.height);
        if (!pre.do_resize || small(resized)) && (!pre.do_center_crop || small(crop)) {
            for (w, h) in [(7, 3), (2, 9)] {
                let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 40) as u8, (y * 30) as u8, 200]));
                let out = preprocess(&img, &pre);
                assert_eq!(out.pixels.len(), 3 * out.width as usize * out.height as usize);
                if let Some(size) = pre.output_size() {
                    assert_eq!(size, (out.width, out.height), "output_size disagrees with preprocess");
                }
            }
        }
    }
}

/// One eval manifest line → a JSON object → the samples of every task, whose truths must be usable.
pub fn manifest_line(data: &[u8]) {
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice(data) else { return };
    for task in [Task::Rec, Task::Vqa, Task::Yesno, Task::Choice] {
        let Ok(samples) = samples_of(task, &obj, 1) else { continue };
        for (i, s) in samples.iter().enumerate() {
            assert!(!s.id.is_empty());
            // The match is exhaustive over tasks so that a new one is not left unchecked.
            match (task, &s.truth) {
                (Task::Rec, Truth::Rec { expression, bbox }) => {
                    assert_eq!(s.sub, i);
                    assert!(!expression.trim().is_empty() && s.prompt.starts_with(rec::PROMPT_PREFIX));
                    assert!(bbox.iter().all(|v| v.is_finite()) && bbox[2] > 0.0 && bbox[3] > 0.0, "{bbox:?}");
                    assert!((bbox[0] + bbox[2]).is_finite() && (bbox[1] + bbox[3]).is_finite(), "{bbox:?}");
                    // What scoring does with it: normalise by an image size, compare with the same box.
                    let gt = rec::gt_box_from_coco(*bbox, 640.0, 480.0);
                    let iou = rec::iou(gt, gt);
                    assert!((0.0..=1.0).contains(&iou), "iou {iou} of {gt:?} with itself");
                }
                (Task::Vqa, Truth::Vqa { .. }) | (Task::Yesno, Truth::YesNo(_)) => assert_eq!(s.sub, 0),
                (Task::Choice, Truth::Choice { answer, n_choices }) => {
                    assert!((2..=26).contains(n_choices));
                    assert!(('A'..=choice::letter(n_choices - 1)).contains(answer), "{answer} of {n_choices}");
                }
                (Task::Rec | Task::Vqa | Task::Yesno | Task::Choice, truth) => {
                    panic!("task {task:?} made the truth {truth:?}")
                }
            }
        }
    }
}

/// A model's REC answer → the box parser and the row score against a few ground truths.
pub fn rec_answer(data: &[u8]) {
    let Ok(response) = std::str::from_utf8(data) else { return };
    let parsed = rec::parse_box(response);
    if let Some(b) = parsed {
        assert!(b.iter().all(|v| v.is_finite()), "{b:?}");
        // Rust prints floats without exponents, the shortest digits that read back: the regex's syntax.
        let printed = format!("[{}, {}, {}, {}]", b[0], b[1], b[2], b[3]);
        assert_eq!(rec::parse_box(&printed).map(|p| p.map(f64::to_bits)), Some(b.map(f64::to_bits)), "{printed}");
    }
    // The first match wins (an overflowing one leaves the answer unparsed), and no match attempt runs on
    // into a following box.
    let appended = rec::parse_box(&format!("{response}[0.25, 0.5, 0.75, 1]"));
    match parsed {
        Some(_) => assert_eq!(appended, parsed),
        None => assert!(matches!(appended, None | Some([0.25, 0.5, 0.75, 1.0])), "{appended:?}"),
    }
    for gt in [[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0], [0.3, 0.3, 0.300001, 0.31]] {
        let score = rec::score_row(response, gt);
        assert!((0.0..=1.0).contains(&score.iou), "iou {} for {:?} against {gt:?}", score.iou, score.parsed);
        assert_eq!(score.acc, rec::THRESHOLDS.map(|t| score.iou >= t));
    }
}
