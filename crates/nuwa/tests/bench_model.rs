//! The benchmark's foundations: the paper's FLOP model, the presets' shapes, seeded random weights and
//! one measured pass (no wall-clock assertions).
use candle_core::{DType, Device};
use nuwa::bench::{self, Preset, RandomWeights, Summary, TokenSchedule};
use nuwa::models::llava;
use nuwa::prune::nuwa::{NuwaConfig, Stages};
use nuwa::Method;
use std::path::PathBuf;

fn nuwa_at(budget: usize) -> Method {
    Method::Nuwa(NuwaConfig { budget, ..NuwaConfig::default() })
}

fn vision_tflops(cfg: &llava::Config, method: &Method) -> f64 {
    let s = TokenSchedule::new(cfg, &bench::bench_layout(cfg, None).unwrap(), method).unwrap();
    bench::llm_flops(&cfg.text_config, &s, 0).vision_only_tflops()
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
        let s = TokenSchedule::new(&cfg, &bench::bench_layout(&cfg, None).unwrap(), &nuwa_at(b)).unwrap();
        assert_eq!((s.k1, s.k2, s.cut_layer, s.layers), (k1, Some(k2), Some(16), 32));
        assert_eq!(s.mean_tokens(), b as f64);
        assert_eq!(s.kv_entries(49), 16 * (k1 + 49) + 16 * (k2 + 49));
    }
    let none = TokenSchedule::new(&cfg, &bench::bench_layout(&cfg, None).unwrap(), &Method::NONE).unwrap();
    assert_eq!((none.k1, none.k2, none.mean_tokens()), (576, None, 576.0));
    let one = Method::Nuwa(NuwaConfig { budget: 64, stages: Stages::One, ..NuwaConfig::default() });
    assert_eq!(TokenSchedule::new(&cfg, &bench::bench_layout(&cfg, None).unwrap(), &one).unwrap().mean_tokens(), 64.0);
    // The total counts the text tokens in every layer.
    let f = bench::llm_flops(&cfg.text_config, &none, 49);
    assert_eq!(f.total, 32.0 * bench::layer_flops(625, 4096, 11008));
    // A shorter decoder moves the cut to its middle.
    let mut short = cfg.clone();
    short.trim(Some(8), None).unwrap();
    let s = TokenSchedule::new(&short, &bench::bench_layout(&short, None).unwrap(), &nuwa_at(64)).unwrap();
    assert_eq!((s.cut_layer, s.layers), (Some(4), 8));
}

#[test]
fn bad_budgets_and_depths_are_rejected() {
    let mut cfg = Preset::Llava15_7b.config();
    assert_eq!(
        TokenSchedule::new(&cfg, &bench::bench_layout(&cfg, None).unwrap(), &nuwa_at(0)).unwrap_err().field(),
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
    let tiny = Preset::Tiny.config();
    assert_eq!(format!("{:?}", tiny.text_config), format!("{:?}", want.text_config));
    assert_eq!(format!("{:?}", tiny.vision_config), format!("{:?}", want.vision_config));

    let big = Preset::Llava15_7b.config();
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
    let p = bench::parameter_count(&big) as f64 / 1e9;
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
    let engine = bench::random_engine(&cfg, None, RandomWeights::default(), DType::F32, &dev).unwrap();
    let prompt = bench::bench_prompt(0, cfg.text_config.vocab_size());
    assert_eq!((prompt.prefix.len(), prompt.prefix[0], prompt.suffix.len()), (35, 1, 14));
    assert!(prompt.prefix.iter().chain(&prompt.suffix).all(|&t| t < 32000));
    let pixels = bench::random_image(&cfg, None, 0, &dev).unwrap();
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
    let cfg = Preset::Tiny.config();
    let pinpoints = Preset::LlavaNext7b.pinpoints().unwrap();
    let layout = bench::bench_layout(&cfg, Some(&pinpoints)).unwrap();
    // 672×672: the base view and 2×2 crops; 576 + 48 rows × (48 + 1).
    assert_eq!((layout.views, layout.len()), (5, 2928));
    let s = TokenSchedule::new(&cfg, &layout, &nuwa_at(160)).unwrap();
    // K1 290 split over five views (58 each), plus the 48 newlines; K2 a tenth of that.
    assert_eq!((s.k1, s.k2, s.cut_layer), (58 + 232 + 48, Some(33), Some(16)));

    let engine = bench::random_engine(&cfg, Some(&pinpoints), RandomWeights::default(), DType::F32, &dev).unwrap();
    let prompt = bench::bench_prompt(0, cfg.text_config.vocab_size());
    let image = bench::random_image(&cfg, Some(&pinpoints), 0, &dev).unwrap();
    assert_eq!((image.pixels.dims(), image.size), (&[5, 3, 336, 336][..], Some((672, 672))));
    let none = bench::measure(&engine, &prompt, &image, &Method::NONE, 1).unwrap();
    let pruned = bench::measure(&engine, &prompt, &image, &nuwa_at(160), 1).unwrap();
    assert_eq!((none.k1, pruned.k1, pruned.k2), (2928, s.k1, s.k2));
}
