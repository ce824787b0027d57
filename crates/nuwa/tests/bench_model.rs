//! The benchmark's foundations: the paper's FLOP model, the presets' shapes, seeded random weights and
//! one measured pass (no wall-clock assertions).
use candle_core::{DType, Device};
use nuwa::bench::{self, BenchConfig, Preset, RandomWeights, Summary, TokenSchedule};
use nuwa::models::{llava, qwen2_5_vl};
use nuwa::prune::nuwa::{Keep, NuwaConfig, Stages};
use nuwa::Method;
use std::path::PathBuf;

fn nuwa_at(budget: usize) -> Method {
    Method::Nuwa(NuwaConfig { budget, ..NuwaConfig::default() })
}

/// Nüwa at a keep ratio (Qwen2.5-VL's only setting).
fn nuwa_keep(ratio: f64) -> Method {
    Method::Nuwa(NuwaConfig { keep: Some(Keep::Ratio(ratio)), ..NuwaConfig::default() })
}

/// (K1, K2) of a keep ratio on an `h`×`w` merged grid, by the spec's rules (grid padded to even sides).
fn keep_counts(ratio: f64, (h, w): (usize, usize)) -> (usize, Option<usize>) {
    let r = Keep::Ratio(ratio).ratios().unwrap();
    let k1 = Keep::k1(&r, h * w, h.div_ceil(2) * w.div_ceil(2));
    (k1, Keep::k2(&r, k1))
}

fn schedule(cfg: &BenchConfig, method: &Method) -> TokenSchedule {
    TokenSchedule::new(cfg, &bench::bench_layout(cfg).unwrap(), method).unwrap()
}

fn vision_tflops(cfg: &BenchConfig, method: &Method) -> f64 {
    bench::llm_flops(cfg.decoder(), &schedule(cfg, method), 0).vision_only_tflops()
}

fn llava_config(preset: Preset) -> llava::Config {
    match preset.config() {
        BenchConfig::Llava { config, .. } => config,
        other => panic!("{} is not a LLaVA preset: {other:?}", preset.name()),
    }
}

#[test]
fn flop_model_reproduces_the_paper_for_llava_1_5_7b() {
    let cfg = Preset::Llava15_7b.config();
    let unpruned = vision_tflops(&cfg, &Method::NONE);
    let b64 = vision_tflops(&cfg, &nuwa_at(64));
    // 32 · (8·576·4096² + 4·576²·4096 + 4·576·4096·11008), exactly.
    assert_eq!(unpruned * 1e12, 5_972_152_025_088.0);
    // 16 · f(112) + 16 · f(16), exactly.
    assert_eq!(b64 * 1e12, 647_600_537_600.0);
    // The paper prints 0.6476 (every digit matches) and 5.973 (the formula gives 5.9722: within one unit
    // of the last printed digit).
    assert_eq!(format!("{b64:.4}"), "0.6476");
    assert!((unpruned - 5.973).abs() < 1e-3, "{unpruned}");
}

#[test]
fn token_schedule_follows_the_budget_rule_and_the_stage2_layer() {
    let cfg = Preset::Llava15_7b.config();
    for (b, k1, k2) in [(64, 112, 16), (128, 224, 32), (192, 336, 48)] {
        let s = schedule(&cfg, &nuwa_at(b));
        assert_eq!((s.k1, s.k2, s.cut_layer, s.layers), (k1, Some(k2), Some(16), 32));
        assert_eq!(s.mean_tokens(), b as f64);
        assert_eq!(s.kv_entries(49), 16 * (k1 + 49) + 16 * (k2 + 49));
    }
    let none = schedule(&cfg, &Method::NONE);
    assert_eq!((none.k1, none.k2, none.mean_tokens()), (576, None, 576.0));
    let one = Method::Nuwa(NuwaConfig { budget: 64, stages: Stages::One, ..NuwaConfig::default() });
    assert_eq!(schedule(&cfg, &one).mean_tokens(), 64.0);
    // A keep ratio on LLaVA: that share of the 576 patches as the budget (144 → K1 252, K2 36).
    let quarter = schedule(&cfg, &nuwa_keep(0.25));
    assert_eq!((quarter.k1, quarter.k2, quarter.mean_tokens()), (252, Some(36), 144.0));
    // The total counts the text tokens in every layer.
    let f = bench::llm_flops(cfg.decoder(), &none, 49);
    assert_eq!(f.total, 32.0 * bench::layer_flops(625, cfg.decoder()));
    // A shorter decoder moves the cut to its middle.
    let mut short = cfg.clone();
    short.trim(Some(8), None).unwrap();
    let s = schedule(&short, &nuwa_at(64));
    assert_eq!((s.cut_layer, s.layers), (Some(4), 8));
}

#[test]
fn bad_budgets_and_depths_are_rejected() {
    let mut cfg = Preset::Llava15_7b.config();
    assert_eq!(
        TokenSchedule::new(&cfg, &bench::bench_layout(&cfg).unwrap(), &nuwa_at(0)).unwrap_err().field(),
        Some("budget")
    );
    assert_eq!(cfg.trim(Some(1), None).unwrap_err().field(), Some("llm_layers"));
    assert_eq!(cfg.trim(Some(33), None).unwrap_err().field(), Some("llm_layers"));
    assert_eq!(cfg.trim(None, Some(25)).unwrap_err().field(), Some("vision_layers"));
    let err = Preset::from_name("llava-13b").unwrap_err().to_string();
    assert!(err.contains("llava-13b") && err.contains("tiny") && err.contains("llava-1.5-7b"), "{err}");
}

#[test]
fn presets_have_the_published_shapes() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llava-1.5/config.json");
    let want = llava::Config::from_json(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let tiny = llava_config(Preset::Tiny);
    assert_eq!(format!("{:?}", tiny.text_config), format!("{:?}", want.text_config));
    assert_eq!(format!("{:?}", tiny.vision_config), format!("{:?}", want.vision_config));

    let big = llava_config(Preset::Llava15_7b);
    let (v, t) = (&big.vision_config, &big.text_config);
    assert_eq!(
        (v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads, v.patch_size, v.image_size),
        (1024, 4096, 24, 16, 14, 336)
    );
    assert_eq!(
        (t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads, t.vocab_size()),
        (4096, 11008, 32, 32, 32064)
    );
    assert_eq!((t.max_position_embeddings, t.rms_norm_eps), (4096, 1e-5));
    // LLaVA-1.5-7B has 7.06 B parameters.
    let p = bench::parameter_count(&Preset::Llava15_7b.config()) as f64 / 1e9;
    assert!((7.0..7.1).contains(&p), "{p}");
}

#[test]
fn random_weights_are_seeded_by_name() {
    let w = RandomWeights { seed: 7, std: 0.02 };
    assert_eq!(w.values("a.weight", 1000), w.values("a.weight", 1000));
    assert_ne!(w.values("a.weight", 1000), w.values("b.weight", 1000));
    assert_ne!(w.values("a.weight", 1000), RandomWeights { seed: 8, std: 0.02 }.values("a.weight", 1000));
    // Large tensors are filled in parallel chunks: the values do not depend on that.
    let big = w.values("big", 3_000_000);
    assert_eq!(&big[..1000], &w.values("big", 1000)[..]);
    let mean = big.iter().map(|&x| x as f64).sum::<f64>() / big.len() as f64;
    let std = (big.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / big.len() as f64).sqrt();
    assert!(mean.abs() < 1e-4 && (std - 0.02).abs() < 1e-4, "mean {mean} std {std}");
}

#[test]
fn a_tiny_random_model_runs_one_measured_pass() {
    let dev = Device::Cpu;
    let cfg = Preset::Tiny.config();
    let engine = bench::random_engine(&cfg, RandomWeights::default(), DType::F32, &dev).unwrap();
    let prompt = bench::bench_prompt(0, cfg.decoder().vocab_size());
    assert_eq!((prompt.prefix.len(), prompt.prefix[0], prompt.suffix.len()), (35, 1, 14));
    assert!(prompt.prefix.iter().chain(&prompt.suffix).all(|&t| t < 32000));
    let pixels = bench::random_image(&cfg, 0, &dev).unwrap();
    assert_eq!(pixels.pixels.dims(), [3, 336, 336]);

    let none = bench::measure(&engine, &prompt, &pixels, &Method::NONE, 3).unwrap();
    let b64 = bench::measure(&engine, &prompt, &pixels, &nuwa_at(64), 3).unwrap();
    assert_eq!((none.k1, none.k2), (576, None));
    assert_eq!((b64.k1, b64.k2), (112, Some(16)));
    assert_eq!(none.stage1_ms, 0.0);
    // K/V of every layer: 2 · hidden · 4 bytes per cached position.
    let per_pos = 2 * 64 * 4;
    assert_eq!(none.kv_cache_prefill_bytes, 32 * 625 * per_pos);
    assert_eq!(none.kv_cache_bytes, 32 * 628 * per_pos);
    assert_eq!(b64.kv_cache_prefill_bytes, (16 * 161 + 16 * 65) * per_pos);
    assert!(b64.kv_cache_bytes < none.kv_cache_bytes / 4);
    assert!(none.ttft_ms >= none.llm_prefill_ms && none.decode_ms_per_token > 0.0);
}

#[test]
fn summaries_and_ratios() {
    let s = Summary::of(&[3.0, 1.0, 2.0, 10.0]).unwrap();
    assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
    assert_eq!(Summary::of(&[4.0, 1.0, 2.0]).unwrap().median, 2.0);
    assert!(Summary::of(&[]).is_none());
    assert_eq!(bench::ratio(1.0, 4.0), Some(0.25));
    assert_eq!(bench::ratio(0.0, 0.0), Some(1.0));
    assert_eq!(bench::ratio(1.0, 0.0), None);
}

#[test]
fn a_benchmark_that_cannot_fit_is_refused_with_what_would() {
    const GB: u64 = 1_000_000_000;
    let full = Preset::Llava15_7b.config();
    let err = bench::check_memory(&full, 576, DType::F32, 24 * GB).unwrap_err().to_string();
    assert!(err.contains("`llm_layers` is 32") && err.contains("`dtype` bf16"), "{err}");
    // The depth it suggests fits; one layer more does not.
    let at = err.find("with `llm_layers` ").expect("a depth is suggested") + "with `llm_layers` ".len();
    let n: usize = err[at..].split_whitespace().next().unwrap().parse().unwrap();
    let trimmed = |layers: usize| {
        let mut c = full.clone();
        c.trim(Some(layers), None).unwrap();
        c
    };
    assert!(bench::check_memory(&trimmed(n), 576, DType::F32, 24 * GB).is_ok());
    assert!(bench::check_memory(&trimmed(n + 1), 576, DType::F32, 24 * GB).is_err());
    // Half precision at full depth fits the same machine (the weights alone are 14 GB).
    assert!(bench::check_memory(&full, 576, DType::BF16, 24 * GB).is_ok());
    assert!(bench::memory_estimate(&full, 576, DType::BF16) > bench::parameter_count(&full) as u64 * 2);
    assert!(bench::check_memory(&Preset::Tiny.config(), 576, DType::F32, 2 * GB).is_ok());
}

#[test]
fn an_anyres_benchmark_encodes_a_square_image_in_five_views() {
    let dev = Device::Cpu;
    let BenchConfig::Llava { pinpoints, .. } = Preset::LlavaNext7b.config() else { panic!("a LLaVA preset") };
    let cfg = BenchConfig::Llava { config: llava_config(Preset::Tiny), pinpoints };
    let layout = bench::bench_layout(&cfg).unwrap();
    // 672×672: the base view and 2×2 crops; 576 + 48 rows × (48 + 1).
    assert_eq!((layout.views, layout.len()), (5, 2928));
    let s = TokenSchedule::new(&cfg, &layout, &nuwa_at(160)).unwrap();
    // K1 290 split over five views (58 each), plus the 48 newlines; K2 a tenth of that.
    assert_eq!((s.k1, s.k2, s.cut_layer), (58 + 232 + 48, Some(33), Some(16)));

    let engine = bench::random_engine(&cfg, RandomWeights::default(), DType::F32, &dev).unwrap();
    let prompt = bench::bench_prompt(0, cfg.decoder().vocab_size());
    let image = bench::random_image(&cfg, 0, &dev).unwrap();
    assert_eq!((image.pixels.dims(), image.size), (&[5, 3, 336, 336][..], Some((672, 672))));
    let none = bench::measure(&engine, &prompt, &image, &Method::NONE, 1).unwrap();
    let pruned = bench::measure(&engine, &prompt, &image, &nuwa_at(160), 1).unwrap();
    assert_eq!((none.k1, pruned.k1, pruned.k2), (2928, s.k1, s.k2));
}

#[test]
fn the_qwen_preset_has_the_7b_shapes() {
    let cfg = Preset::Qwen25Vl7b.config();
    let BenchConfig::Qwen { config, .. } = &cfg else { panic!("a Qwen2.5-VL preset") };
    let (v, t) = (&config.vision, &config.text);
    assert_eq!(
        (v.depth, v.hidden_size, v.num_heads, v.intermediate_size, v.out_hidden_size, v.fullatt_block_indexes.clone()),
        (32, 1280, 16, 3420, 3584, vec![7, 15, 23, 31])
    );
    assert_eq!(
        (t.num_hidden_layers, t.hidden_size, t.num_attention_heads, t.num_key_value_heads(), t.intermediate_size),
        (28, 3584, 28, 4, 18944)
    );
    assert_eq!(
        (t.vocab_size(), t.tie_word_embeddings, t.rms_norm_eps, config.mrope_section),
        (152064, false, 1e-6, [16, 24, 24])
    );
    // Qwen2.5-VL-7B-Instruct's published parameter count, exactly.
    assert_eq!(bench::parameter_count(&cfg), 8_292_166_656);
    // The default image: 1000×750 → 1008×756 → 54×72 patches → 27×36 merged tokens.
    let layout = bench::bench_layout(&cfg).unwrap();
    assert_eq!((layout.grids[0].rows, layout.grids[0].cols, layout.len()), (27, 36, 972));
    assert_eq!((cfg.family(), cfg.encoded_size().unwrap()), ("qwen2.5-vl", Some((1008, 756))));
    // Only Qwen2.5-VL takes an image of any size; a 300:1 image it refuses.
    let square = cfg.clone().with_image_size(448, 448).unwrap();
    assert_eq!(bench::bench_layout(&square).unwrap().len(), 256);
    assert_eq!(cfg.with_image_size(3000, 10).unwrap_err().field(), Some("image"));
    assert_eq!(Preset::Llava15_7b.config().with_image_size(1000, 750).unwrap_err().field(), Some("image_size"));
}

#[test]
fn the_qwen_schedule_follows_the_keep_ratios_and_cuts_after_the_middle() {
    let cfg = Preset::Qwen25Vl7b.config();
    // The spec's rules on 972 tokens in 14×18 padded cells, and the numbers they give.
    for (ratio, k1, k2) in [(0.25, 341, 143), (0.5, 584, 385), (0.75, 827, 578)] {
        assert_eq!(keep_counts(ratio, (27, 36)), (k1, Some(k2)), "{ratio}");
        let s = schedule(&cfg, &nuwa_keep(ratio));
        // As released: layer 14's scores cut before layer 15.
        assert_eq!((s.k1, s.k2, s.cut_layer, s.layers), (k1, Some(k2), Some(15), 28), "{ratio}");
        assert_eq!(s.per_layer, [vec![k1; 15], vec![k2; 13]].concat(), "{ratio}");
    }
    let one = Method::Nuwa(NuwaConfig { keep: Some(Keep::Ratio(0.25)), stages: Stages::One, ..NuwaConfig::default() });
    assert_eq!(schedule(&cfg, &one).per_layer, vec![341; 28]);
    assert_eq!(schedule(&cfg, &Method::NONE).per_layer, vec![972; 28]);
    // A shorter decoder: the cut one layer after its middle.
    let mut short = cfg.clone();
    short.trim(Some(4), None).unwrap();
    assert_eq!(schedule(&short, &nuwa_keep(0.5)).per_layer, [584, 584, 584, 385]);
    // Grouped-query attention: the K and V projections are 4 · 128 = 512 wide, not 3584.
    assert_eq!(bench::layer_flops(1, cfg.decoder()), (4 * 3584 * (3584 + 512) + 4 * 3584 + 4 * 3584 * 18944) as f64);
    // The estimate counts the 7B's weights and a KV cache of 4 heads.
    assert!(bench::memory_estimate(&cfg, 972, DType::F32) > 8_292_166_656 * 4);
}

#[test]
fn a_narrow_random_qwen_model_keeps_what_the_schedule_says() {
    let dev = Device::Cpu;
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-qwen2.5-vl/config.json");
    let config = qwen2_5_vl::Config::from_json(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let processor = qwen2_5_vl::PreprocessConfig::default();
    let cfg =
        BenchConfig::Qwen { config, processor, image: bench::QWEN_BENCH_IMAGE }.with_image_size(224, 224).unwrap();
    let layout = bench::bench_layout(&cfg).unwrap();
    assert_eq!(layout.len(), 64);
    let engine = bench::random_engine(&cfg, RandomWeights::default(), DType::F32, &dev).unwrap();
    let prompt = bench::bench_prompt(0, cfg.decoder().vocab_size());
    let image = bench::random_image(&cfg, 0, &dev).unwrap();
    assert_eq!((image.pixels.dims(), image.size), (&[256, 1176][..], Some((224, 224))));
    // K and V of 2 heads × 16 per cached position and layer, f32.
    let per_position = 2 * 2 * 16 * 4;
    for method in [Method::NONE, nuwa_keep(0.25), nuwa_keep(0.5), nuwa_keep(0.75)] {
        let s = schedule(&cfg, &method);
        if method != Method::NONE {
            assert_eq!((s.k1, s.k2), keep_counts(method.keep_ratio("qwen2.5-vl").unwrap(), (8, 8)));
        }
        let m = bench::measure(&engine, &prompt, &image, &method, 1).unwrap();
        assert_eq!((m.k1, m.k2), (s.k1, s.k2), "{method:?}");
        assert_eq!(m.kv_cache_prefill_bytes, s.kv_entries(49) * per_position, "{method:?}");
    }
}
