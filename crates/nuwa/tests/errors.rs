//! Bad input gets an error that names the file or field and what was expected — never a panic.
mod common;
use candle_core::{DType, Device, Tensor};
use common::hostile::*;
use common::scratch::Scratch;
use common::*;
use nuwa::{Engine, Error, GenerateRequest, ImageInput, LoadOptions, Method, NuwaConfig, Sampling};
use std::path::Path;

/// A copy of the tiny checkpoint in a fresh directory, with `edit` applied.
fn broken_checkpoint(name: &str, edit: impl FnOnce(&Path)) -> Scratch {
    let dir = Scratch::new(&format!("errors-{name}"));
    for f in
        ["config.json", "generation_config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"]
    {
        std::fs::copy(tiny_dir().join(f), dir.join(f)).unwrap();
    }
    edit(&dir);
    dir
}

fn load_err(dir: &Path) -> String {
    match Engine::load(dir, &LoadOptions::default()) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_model_dir() {
    let err = load_err(Path::new("/nonexistent/nuwa-model"));
    assert!(err.contains("/nonexistent/nuwa-model") && err.contains("not found"), "{err}");
}

#[test]
fn missing_files_are_named() {
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        let dir = broken_checkpoint(&format!("missing-{file}"), |d| std::fs::remove_file(d.join(file)).unwrap());
        let err = load_err(&dir);
        assert!(err.contains(file) || err.contains("model.safetensors"), "{file}: {err}");
    }
}

#[test]
fn truncated_safetensors_is_named() {
    let dir = broken_checkpoint("truncated", |d| {
        let f = d.join("model.safetensors");
        let len = std::fs::metadata(&f).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(len / 2).unwrap();
    });
    let err = load_err(&dir);
    assert!(err.contains("model.safetensors") && err.contains("truncated"), "{err}");
}

#[test]
fn corrupt_safetensors_is_named() {
    let dir = broken_checkpoint("corrupt", |d| {
        std::fs::write(d.join("model.safetensors"), b"\x10\0\0\0\0\0\0\0not json at all!").unwrap()
    });
    let err = load_err(&dir);
    assert!(err.contains("model.safetensors") && err.contains("corrupt"), "{err}");
    let dir = broken_checkpoint("tiny", |d| std::fs::write(d.join("model.safetensors"), b"abc").unwrap());
    let err = load_err(&dir);
    assert!(err.contains("model.safetensors") && err.contains("not a safetensors file"), "{err}");
}

#[test]
fn missing_shard_is_named() {
    let dir = broken_checkpoint("shards", |d| {
        std::fs::remove_file(d.join("model.safetensors")).unwrap();
        std::fs::write(
            d.join("model.safetensors.index.json"),
            r#"{"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors"}}"#,
        )
        .unwrap();
    });
    let err = load_err(&dir);
    assert!(err.contains("model-00001-of-00002.safetensors") && err.contains("missing"), "{err}");
}

#[test]
fn sharded_checkpoint_loads_like_a_single_file() {
    let dir = broken_checkpoint("sharded-ok", |d| {
        let all = candle_core::safetensors::load(d.join("model.safetensors"), &Device::Cpu).unwrap();
        std::fs::remove_file(d.join("model.safetensors")).unwrap();
        let (vision, text): (Vec<_>, Vec<_>) = all.into_iter().partition(|(k, _)| k.starts_with("vision_tower"));
        let mut map = serde_json::Map::new();
        for (i, part) in [vision, text].into_iter().enumerate() {
            let name = format!("model-0000{}-of-00002.safetensors", i + 1);
            for (k, _) in &part {
                map.insert(k.clone(), name.clone().into());
            }
            let part: std::collections::HashMap<_, _> = part.into_iter().collect();
            candle_core::safetensors::save(&part, d.join(&name)).unwrap();
        }
        let index = serde_json::json!({"metadata": {}, "weight_map": map});
        std::fs::write(d.join("model.safetensors.index.json"), index.to_string()).unwrap();
    });
    let e = Engine::load(&dir, &LoadOptions::default()).unwrap();
    let pre = e.prefill(&request(Method::NONE, 1)).unwrap();
    assert!(max_abs_diff(&pre.logits, g("unpruned.logits_last")) <= 2e-3);
}

#[test]
fn wrong_tensor_shape_is_named() {
    let dir = broken_checkpoint("shape", |d| {
        let f = d.join("model.safetensors");
        let mut all = candle_core::safetensors::load(&f, &Device::Cpu).unwrap();
        all.insert(
            "multi_modal_projector.linear_1.weight".into(),
            Tensor::zeros((64, 31), DType::F16, &Device::Cpu).unwrap(),
        );
        candle_core::safetensors::save(&all, &f).unwrap();
    });
    let err = load_err(&dir);
    assert!(err.contains("multi_modal_projector.linear_1.weight") && err.contains("shape"), "{err}");
}

#[test]
fn malformed_config_is_named() {
    let dir = broken_checkpoint("config", |d| {
        std::fs::write(d.join("config.json"), "{\"text_config\": {\"hidden_size\": \"big\"}}").unwrap()
    });
    let err = load_err(&dir);
    assert!(err.contains("config.json") && err.contains("hidden_size"), "{err}");
    let dir = broken_checkpoint("config-syntax", |d| std::fs::write(d.join("config.json"), "{ not json").unwrap());
    assert!(load_err(&dir).contains("config.json"));
}

#[test]
fn config_defaults_fill_omitted_keys() {
    // A hub text_config often gives only what differs from LlamaConfig's defaults.
    let cfg = nuwa::models::llava::Config::from_json(
        r#"{"text_config": {"vocab_size": 32064, "rms_norm_eps": 1e-5, "rope_parameters": {"rope_theta": 5e5, "rope_type": "default"}}, "dtype": "bfloat16"}"#,
    )
    .unwrap();
    assert_eq!(cfg.text_config.hidden_size, 4096);
    assert_eq!(cfg.text_config.num_hidden_layers, 32);
    assert_eq!(cfg.text_config.num_key_value_heads(), 32);
    assert_eq!(cfg.text_config.rope_theta(), 5e5);
    assert_eq!(cfg.vision_config.num_hidden_layers, 24);
    assert_eq!(cfg.vision_config.grid_side(), 24);
    assert_eq!(cfg.feature_layer().unwrap(), 23);
    assert_eq!(cfg.torch_dtype.as_deref(), Some("bfloat16"));
    let err = nuwa::models::llava::Config::from_json(r#"{"text_config": {"hidden_act": "gelu"}}"#).unwrap_err();
    assert!(err.contains("hidden_act"), "{err}");
}

fn request(method: Method, max_new_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: QUESTION.into(),
        image: Some(ImageInput::Pixels(g("pixel_values").clone())),
        method,
        positions: None,
        sampling: Sampling::default(),
        max_new_tokens,
        stop: vec![],
    }
}

fn image_err(name: &str, bytes: &[u8]) -> String {
    let dir = Scratch::new("errors-img");
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let mut req = request(Method::NONE, 1);
    req.image = Some(ImageInput::Path(path.clone()));
    let err = engine().generate(&req, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains(path.to_str().unwrap()), "{err}");
    err
}

#[test]
fn bad_images_are_named() {
    image_err("empty.png", b"");
    image_err("corrupt.png", b"\x89PNG\r\n\x1a\n garbage that is not a png");
    let png = std::fs::read(tiny_dir().join("image.png")).unwrap();
    image_err("truncated.png", &png[..png.len() / 2]);
    let mut req = request(Method::NONE, 1);
    req.image = Some(ImageInput::Path("/nonexistent/picture.jpg".into()));
    let err = engine().generate(&req, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/picture.jpg"), "{err}");
}

#[test]
fn wrong_pixel_shape_is_rejected() {
    let mut req = request(Method::NONE, 1);
    req.image = Some(ImageInput::Pixels(Tensor::zeros((3, 224, 224), DType::F32, &Device::Cpu).unwrap()));
    let err = engine().generate(&req, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("[3, 336, 336]"), "{err}");
}

#[test]
fn prompt_longer_than_the_context() {
    let long = "word ".repeat(4000);
    let mut req = request(Method::NONE, 1);
    req.prompt = long;
    match engine().generate(&req, &mut |_| {}) {
        Err(Error::ContextOverflow { needed, context }) => assert!(needed > context && context == 4096),
        other => panic!("expected a context overflow, got {:?}", other.map(|g| g.tokens)),
    }
}

#[test]
fn zero_new_tokens_and_impossible_pruning_values() {
    let err = engine().generate(&request(Method::NONE, 0), &mut |_| {}).unwrap_err();
    assert_eq!(err.field(), Some("max_new_tokens"), "{err}");
    for (cfg, field) in [
        (NuwaConfig { budget: 0, ..NuwaConfig::default() }, "budget"),
        (NuwaConfig { pillar_quantile: Some(1.2), ..NuwaConfig::default() }, "pillar_quantile"),
        (NuwaConfig { distance: 0.0, ..NuwaConfig::default() }, "distance"),
    ] {
        assert_eq!(cfg.validate().unwrap_err().field(), Some(field));
    }
    for layer in [0, 32] {
        let m = Method::Nuwa(NuwaConfig { stage2_layer: Some(layer), ..NuwaConfig::default() });
        let err = engine().generate(&request(m, 1), &mut |_| {}).unwrap_err();
        assert_eq!(err.field(), Some("stage2_layer"), "layer {layer}: {err}");
        assert!(err.to_string().contains("1..=31"), "{err}");
    }
}

#[test]
fn text_only_prompt_runs() {
    let mut req = request(Method::NONE, 3);
    req.image = None;
    let gen = engine().generate(&req, &mut |_| {}).unwrap();
    assert_eq!(gen.tokens.len(), 3);
    assert!(gen.vision.is_none());
}

#[test]
fn unsupported_model_family_is_refused_by_name() {
    let dir = broken_checkpoint("family", |d| {
        let path = d.join("config.json");
        let text =
            std::fs::read_to_string(&path).unwrap().replace("\"model_type\": \"llava\"", "\"model_type\": \"mllama\"");
        std::fs::write(path, text).unwrap();
    });
    let err = load_err(&dir);
    assert!(err.contains("config.json") && err.contains("model_type") && err.contains("mllama"), "{err}");
    assert!(err.contains("llava"), "names what is supported: {err}");
}

#[test]
fn hostile_images_are_refused_before_decoding() {
    // Claims 10^10 pixels: refused from the header, nothing allocated.
    for (name, bytes) in
        [("bomb.png", png_claiming(100_000)), ("bomb.jpg", jpeg_claiming(60_000)), ("bomb.gif", gif_claiming(60_000))]
    {
        let err = image_err(name, &bytes);
        assert!(err.contains("pixels") && err.contains("limit"), "{name}: {err}");
    }
    // WebP's decoder notices the header disagrees with the data before anything is allocated.
    let err = image_err("bomb.webp", &webp_claiming(16_384));
    assert!(err.contains("cannot decode"), "{err}");
    let bytes = png_claiming(100_000);
    let err = nuwa::preprocess::decode_image_within(&bytes, "bomb", 1000).unwrap_err().to_string();
    assert!(err.contains("1000"), "{err}");
    // A JPEG cut in half decodes to grey without complaint unless its end marker is required.
    let img = nuwa::preprocess::load_image(&tiny_dir().join("image.png")).unwrap();
    let mut jpeg = std::io::Cursor::new(Vec::new());
    img.write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
    let jpeg = jpeg.into_inner();
    assert!(nuwa::preprocess::decode_image(&jpeg, "whole").is_ok());
    let err = image_err("half.jpg", &jpeg[..jpeg.len() / 2]);
    assert!(err.contains("truncated"), "{err}");
}

#[cfg(unix)]
#[test]
fn special_files_are_not_read_as_images() {
    let dir = Scratch::new("errors-fifo");
    let fifo = dir.join("pipe.png");
    let _ = std::fs::remove_file(&fifo);
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for path in [fifo.as_path(), Path::new("/dev/zero"), &dir] {
        let err = nuwa::preprocess::load_image(path).unwrap_err().to_string();
        assert!(err.contains("not a regular file") && err.contains(path.to_str().unwrap()), "{err}");
    }
}

#[test]
fn config_values_that_would_give_nan_are_refused() {
    for (edit, field) in [
        (r#""rope_theta": 10000.0"#, r#""rope_theta": 0"#),
        (r#""rms_norm_eps": 1e-05"#, r#""rms_norm_eps": -1"#),
        (r#""num_hidden_layers": 32"#, r#""num_hidden_layers": 0"#),
        // Would overflow the patch count (and truncate in the preprocessor check) before any weight is read.
        (r#""image_size": 336"#, r#""image_size": 4294967632"#),
    ] {
        let dir = broken_checkpoint(&format!("nan-{}", field.len()), |d| {
            let path = d.join("config.json");
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.contains(edit), "fixture config lacks {edit}");
            std::fs::write(path, text.replace(edit, field)).unwrap();
        });
        let err = load_err(&dir);
        let name = field.split('"').nth(1).unwrap();
        assert!(err.contains("config.json") && err.contains(name), "{field}: {err}");
    }
}

#[test]
fn non_finite_pixel_values_are_refused() {
    let mut req = request(Method::NONE, 1);
    let nan = (g("pixel_values") * f64::NAN).unwrap();
    req.image = Some(ImageInput::Pixels(nan));
    let err = engine().generate(&req, &mut |_| {}).unwrap_err();
    assert_eq!(err.field(), Some("pixel_values"), "{err}");
}

#[test]
fn silently_wrong_weight_files_are_refused() {
    // An integer tensor where a float weight belongs.
    let dir = broken_checkpoint("i64", |d| {
        let f = d.join("model.safetensors");
        let mut all = candle_core::safetensors::load(&f, &Device::Cpu).unwrap();
        all.insert("multi_modal_projector.linear_1.bias".into(), Tensor::zeros(64, DType::I64, &Device::Cpu).unwrap());
        candle_core::safetensors::save(&all, &f).unwrap();
    });
    let err = load_err(&dir);
    assert!(err.contains("multi_modal_projector.linear_1.bias") && err.contains("I64"), "{err}");
    // The same tensor in two shards.
    let dir = broken_checkpoint("dup-shards", |d| {
        let all = candle_core::safetensors::load(d.join("model.safetensors"), &Device::Cpu).unwrap();
        std::fs::remove_file(d.join("model.safetensors")).unwrap();
        let names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
        let mut map = serde_json::Map::new();
        for (i, k) in all.keys().enumerate() {
            map.insert(k.clone(), names[i % 2].into());
        }
        // Each shard holds every tensor, although the index names only half of them in each.
        for name in names {
            candle_core::safetensors::save(&all, d.join(name)).unwrap();
        }
        std::fs::write(d.join("model.safetensors.index.json"), serde_json::json!({"weight_map": map}).to_string())
            .unwrap();
    });
    let err = load_err(&dir);
    assert!(err.contains("also in") && err.contains("model-00001-of-00002.safetensors"), "{err}");
    // A shard index pointing outside the model folder.
    for escape in ["../model.safetensors", "/etc/passwd"] {
        let dir = broken_checkpoint("escape", |d| {
            std::fs::write(
                d.join("model.safetensors.index.json"),
                serde_json::json!({"weight_map": {"a": escape}}).to_string(),
            )
            .unwrap();
        });
        let err = load_err(&dir);
        assert!(err.contains("leaves the model folder") && err.contains(escape), "{escape}: {err}");
    }
}

#[test]
fn mismatched_companion_files_are_named_at_load() {
    // Without preprocessor_config.json, CLIPImageProcessor's 224 default cannot feed a 336 encoder.
    let dir =
        broken_checkpoint("no-preprocessor", |d| std::fs::remove_file(d.join("preprocessor_config.json")).unwrap());
    let err = load_err(&dir);
    assert!(err.contains("preprocessor_config.json is missing") && err.contains("image_size"), "{err}");
    // A tokenizer with ids beyond the model's vocabulary.
    let dir = broken_checkpoint("vocab", |d| {
        let path = d.join("tokenizer.json");
        let mut t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        t["model"]["vocab"]["<beyond>"] = serde_json::json!(40000);
        std::fs::write(path, t.to_string()).unwrap();
    });
    let err = match Engine::load(&dir, &LoadOptions::default()) {
        Ok(_) => panic!("a 1000-token vocabulary should be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("tokenizer.json") && err.contains("vocab_size"), "{err}");
}

#[test]
fn every_method_runs_or_refuses_at_every_budget() {
    let e = engine();
    for name in nuwa::prune::METHOD_NAMES.iter().filter(|&&n| n != "manual" && n != "none") {
        for budget in [1, 2, 9, 575, 1000] {
            match Method::from_name(name, budget, 0) {
                Ok(method) => {
                    let pre = e.prefill(&request(method, 1)).unwrap_or_else(|err| panic!("{name}@{budget}: {err}"));
                    let report = pre.vision.unwrap();
                    assert!(report.k1 >= 1 && report.k1 <= 577, "{name}@{budget}: {} tokens", report.k1);
                }
                Err(err) => assert_eq!(err.field(), Some("budget"), "{name}@{budget}: {err}"),
            }
        }
    }
}

#[test]
fn a_missing_config_section_is_named_when_the_weights_disagree() {
    let dir = broken_checkpoint("no-vision-config", |d| {
        let path = d.join("config.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("vision_config");
        std::fs::write(path, v.to_string()).unwrap();
    });
    let err = load_err(&dir);
    assert!(err.contains("no vision_config section"), "{err}");
}
