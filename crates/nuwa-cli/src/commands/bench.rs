//! `nuwa bench`: vision encoder, stage 1, decoder prefill, time to first token, decode speed, KV cache
//! and peak memory for each pruning configuration, with ratios to the unpruned model measured in the
//! same process, and the paper's FLOP model. Runs a checkpoint or a random-weight preset.

use super::{device, dtype};
use crate::args::{parse_budget, Budget, DTypeArg, DeviceArg, PruneArg, StagesArg};
use anyhow::{bail, Context, Result};
use nuwa::bench::{self, memory, BenchConfig, Flops, Preset, RandomWeights, Sample, Summary, TokenSchedule};
use nuwa::prune::nuwa::{Stages, MERGED_GRID_FAMILY};
use nuwa::prune::PruneSpec;
use nuwa::{Engine, LoadOptions, Method};
use serde_json::{json, Value};
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A llava-hf checkpoint directory (with the `hub` feature, a hub id).
    #[arg(long, value_name = "DIR", conflicts_with = "preset", required_unless_present = "preset")]
    pub model: Option<String>,
    /// Random weights (seeded) with a known model's shapes: `tiny` (the test fixture's shapes),
    /// `llava-1.5-7b` (CLIP ViT-L/14-336 + Vicuna-7B), `llava-next-7b` (the same networks over LLaVA-NeXT's
    /// anyres views of a 672×672 image: 2928 image tokens) or `qwen2.5-vl-7b` (Qwen2.5-VL-7B: windowed ViT
    /// 32 × 1280, decoder 28 × 3584 with 4 KV heads; image tokens from --image-size).
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// Qwen2.5-VL only: the size of the image it encodes, before smart resizing [default: 1000x750, resized
    /// to 1008×756: 972 merged tokens].
    #[arg(long, value_name = "WxH", value_parser = parse_image_size)]
    pub image_size: Option<(u32, u32)>,
    /// Keep only the first N decoder layers (the stage-2 layer follows: half the depth, on Qwen2.5-VL one
    /// layer later).
    #[arg(long, value_name = "N")]
    pub llm_layers: Option<usize>,
    /// Keep only the first N vision-encoder layers.
    #[arg(long, value_name = "N")]
    pub vision_layers: Option<usize>,
    /// Weight dtype. On the CPU bf16 and f16 weights compute in f32 (activations and attention; the KV
    /// cache is held in the weights' dtype); on CUDA everything runs in this dtype.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
    /// Quantise the decoder's linears and LM head at load: q8_0 or q4_k (see `nuwa generate --help`).
    #[arg(long, value_enum)]
    pub quantize: Option<crate::args::QuantizeArg>,
    /// Where to run: cpu, or cuda (needs a build with `--features cuda`).
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Methods to measure, comma-separated (any of `--prune`'s but manual); the unpruned model is
    /// always measured as the baseline. `--stages` and `--stage2-layer` apply to nuwa.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "none,nuwa")]
    pub prune: Vec<PruneArg>,
    /// Budgets, comma-separated: mean vision tokens over the decoder's layers (pdrop and sparsevlm
    /// take 64, 96, 128 or 192), or for nuwa keep ratios such as 25% (the share of the image's tokens; on
    /// Qwen2.5-VL the only setting: 25%, 50%, 75%) [default: 64,128,192; Qwen2.5-VL: 25%,50%,75%].
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub budgets: Option<Vec<String>>,
    /// Which Nüwa stages run: both, 1 (K1 = budget, no cut) or 2 (all patches in, budget survive).
    #[arg(long, value_enum, default_value_t = StagesArg::Both)]
    pub stages: StagesArg,
    /// Decoder layer before which stage 2 cuts [default: half the decoder depth].
    #[arg(long)]
    pub stage2_layer: Option<usize>,
    /// Greedy decode steps after the first token (decode ms/token is their mean).
    #[arg(long, value_name = "M", default_value_t = 8)]
    pub decode_tokens: usize,
    /// Measured runs per configuration (median, min, max are reported).
    #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
    pub runs: i64,
    /// Unmeasured warm-up runs per configuration.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub warmup: i64,
    /// Seed of the random weights, pixels and prompt ids.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the FLOP model only: no weights are built or loaded.
    #[arg(long)]
    pub flops_only: bool,
    /// Print one JSON object instead of tables (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON object to this file (with the tables on stdout).
    #[arg(long, value_name = "FILE")]
    pub save_json: Option<std::path::PathBuf>,
}

/// One method × budget to measure.
struct Config {
    label: String,
    method: Method,
    schedule: TokenSchedule,
    flops: Flops,
}

/// What was measured for one configuration.
struct Measured {
    samples: Vec<Sample>,
    peak_rss: Option<u64>,
    /// Resident memory when its passes started (the weights, mostly).
    base_rss: Option<u64>,
}

/// A timed quantity: (JSON key, table header, value of a sample).
type Timed = (&'static str, &'static str, fn(&Sample) -> f64);

/// The timed quantities, in report order.
const TIMES: [Timed; 6] = [
    ("vision", "vision", |s| s.vision_ms),
    ("stage1", "stage-1", |s| s.stage1_ms),
    ("llm_prefill", "LLM prefill", |s| s.llm_prefill_ms),
    ("prefill", "vision+LLM", |s| s.prefill_ms()),
    ("ttft", "TTFT", |s| s.ttft_ms),
    ("decode_per_token", "decode/tok", |s| s.decode_ms_per_token),
];

pub fn run(args: BenchArgs) -> Result<()> {
    let runs = positive("--runs", args.runs)?;
    check_writable(&args)?;
    let warmup =
        usize::try_from(args.warmup).map_err(|_| anyhow::anyhow!("--warmup must be 0 or more, got {}", args.warmup))?;
    if args.prune.is_empty() {
        bail!("--prune needs at least one method (none, nuwa)");
    }

    let (cfg, source) = match (&args.preset, &args.model) {
        (Some(name), _) => {
            let preset = Preset::from_name(name)?;
            (preset.config(), Source::Preset(preset))
        }
        (None, Some(model)) => {
            let dir = nuwa::checkpoint::resolve(model)?;
            let ckpt = nuwa::checkpoint::Checkpoint::open(&dir)?;
            (BenchConfig::from_checkpoint(&ckpt)?, Source::Checkpoint(dir))
        }
        (None, None) => bail!("pass --model DIR or --preset NAME (tiny, llava-1.5-7b, llava-next-7b, qwen2.5-vl-7b)"),
    };
    let mut cfg = match args.image_size {
        Some((w, h)) => cfg.with_image_size(w, h)?,
        None => cfg,
    };
    let full_depth = cfg.depths();
    cfg.trim(args.llm_layers, args.vision_layers)?;
    cfg.decoder_mut().weights.quantize = args.quantize.map(|q| q.format());
    let layout = bench::bench_layout(&cfg)?;
    let budgets = parse_budgets(&args, &cfg)?;
    if args.prune.iter().any(|&p| p != PruneArg::None) && budgets.is_empty() {
        bail!("--budgets needs at least one budget for a pruning method");
    }

    let configs = configurations(&args, &budgets, &cfg, &layout)?;
    let describe = Description {
        source: &source,
        cfg: &cfg,
        image_tokens: layout.len(),
        grid: layout.grids.first().map(|g| [g.rows, g.cols]),
        image_size: cfg.encoded_size()?,
        full_depth,
        args: &args,
        runs,
        warmup,
    };

    if args.flops_only {
        let report = flops_json(&describe, &configs);
        save(&args, &report)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_flops(&describe, &configs);
        }
        return Ok(());
    }

    let dev = device(args.device)?;
    let dt = dtype(args.dtype);
    if let (true, Some(available)) = (dev.is_cpu(), memory::available_bytes()) {
        bench::check_memory(&cfg, layout.len(), dt, available)?;
    }
    let t = Instant::now();
    eprintln!(
        "building {} ({} parameters, {:?})…",
        describe.model_name(),
        human_count(bench::parameter_count(&cfg)),
        dt
    );
    let engine = match &source {
        Source::Preset(_) => bench::random_engine(&cfg, RandomWeights { seed: args.seed, std: 0.02 }, dt, &dev)?,
        Source::Checkpoint(dir) => {
            let opts = LoadOptions {
                dtype: dt,
                device: dev.clone(),
                llm_layers: args.llm_layers,
                vision_layers: args.vision_layers,
                quantize: args.quantize.map(|q| q.format()),
                ..LoadOptions::default()
            };
            Engine::load(dir, &opts)?
        }
    };
    eprintln!(
        "  ready in {:.1} s, resident {}",
        t.elapsed().as_secs_f64(),
        memory::rss_bytes().map_or("?".into(), human_bytes)
    );
    let prompt = match &engine.tokenizer {
        Some(_) => engine.prompt(bench::BENCH_QUESTION, true)?,
        None => bench::bench_prompt(args.seed, cfg.decoder().vocab_size()),
    };
    let pixels = bench::random_image(&cfg, args.seed, &dev)?;

    let measured = measure_all(&engine, &prompt, &pixels, &configs, runs, warmup, args.decode_tokens)?;
    let report = report_json(&describe, &configs, &measured, prompt.prefix.len(), prompt.suffix.len());
    save(&args, &report)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&describe, &report);
    }
    Ok(())
}

/// Fails now, not after the whole run, when `--save-json` cannot be written.
fn check_writable(args: &BenchArgs) -> Result<()> {
    if let Some(path) = &args.save_json {
        let existed = path.exists();
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("--save-json {}: cannot write there", path.display()))?;
        if !existed {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(())
}

fn save(args: &BenchArgs, report: &Value) -> Result<()> {
    if let Some(path) = &args.save_json {
        std::fs::write(path, serde_json::to_string_pretty(report)? + "\n")
            .with_context(|| format!("--save-json {}", path.display()))?;
    }
    Ok(())
}

fn positive(flag: &str, v: i64) -> Result<usize> {
    if v < 1 {
        bail!("{flag} must be at least 1, got {v}");
    }
    Ok(v as usize)
}

/// `--image-size`: `WxH` in pixels, e.g. 1000x750.
fn parse_image_size(s: &str) -> Result<(u32, u32), String> {
    let parsed =
        s.split_once(['x', 'X', '×']).and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?)));
    match parsed {
        Some((w, h)) if w > 0 && h > 0 => Ok((w, h)),
        _ => Err(format!("expected WIDTHxHEIGHT in pixels like 1000x750, got {s:?}")),
    }
}

/// `--budgets` parsed, or the family's default: keep ratios on Qwen2.5-VL (its Nüwa has no token budget),
/// the paper's token budgets elsewhere.
fn parse_budgets(args: &BenchArgs, cfg: &BenchConfig) -> Result<Vec<Budget>> {
    let merged = cfg.family() == MERGED_GRID_FAMILY;
    let Some(given) = &args.budgets else {
        let default = if merged { "25%,50%,75%" } else { "64,128,192" };
        return Ok(default.split(',').map(|b| parse_budget(b).expect("valid defaults")).collect());
    };
    given
        .iter()
        .map(|b| {
            let budget = parse_budget(b).map_err(|e| anyhow::anyhow!("--budgets: {e}"))?;
            if budget == Budget::Tokens(0) {
                bail!("--budgets must be at least 1, got {b}");
            }
            Ok(budget)
        })
        .collect()
}

enum Source {
    Preset(Preset),
    Checkpoint(std::path::PathBuf),
}

struct Description<'a> {
    source: &'a Source,
    cfg: &'a BenchConfig,
    /// Image tokens of the unpruned sequence.
    image_tokens: usize,
    /// The first (or only) patch grid of the image's layout, rows × cols.
    grid: Option<[usize; 2]>,
    /// The (width, height) the model is told its image has, where it is told one.
    image_size: Option<(u32, u32)>,
    full_depth: (usize, usize),
    args: &'a BenchArgs,
    runs: usize,
    warmup: usize,
}

impl Description<'_> {
    fn model_name(&self) -> String {
        match self.source {
            Source::Preset(p) => format!("preset {} (random weights, seed {})", p.name(), self.args.seed),
            Source::Checkpoint(dir) => format!("checkpoint {}", dir.display()),
        }
    }

    fn depth(&self) -> String {
        let (llm, vision) = self.cfg.depths();
        format!("decoder {llm}/{} layers, vision encoder {vision}/{} layers", self.full_depth.0, self.full_depth.1)
    }

    fn model_json(&self) -> Value {
        let (kind, name) = match self.source {
            Source::Preset(p) => ("preset", p.name().to_string()),
            Source::Checkpoint(dir) => ("checkpoint", dir.display().to_string()),
        };
        let t = self.cfg.decoder();
        let (llm_layers, vision_layers) = self.cfg.depths();
        json!({
            "source": kind,
            "name": name,
            "family": self.cfg.family(),
            "seed": matches!(self.source, Source::Preset(_)).then_some(self.args.seed),
            "dtype": format!("{:?}", self.args.dtype).to_lowercase(),
            "quantize": t.weights.quantize.map(|q| q.name()),
            "device": format!("{:?}", self.args.device).to_lowercase(),
            "llm_layers": llm_layers,
            "llm_layers_full": self.full_depth.0,
            "vision_layers": vision_layers,
            "vision_layers_full": self.full_depth.1,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "attention_heads": t.num_attention_heads,
            "kv_heads": t.num_key_value_heads(),
            "vision_hidden_size": self.cfg.vision_hidden_size(),
            "grid": self.grid,
            "image_size": self.image_size,
            "image_tokens": self.image_tokens,
            "parameters": bench::parameter_count(self.cfg),
        })
    }
}

fn configurations(
    args: &BenchArgs,
    budgets: &[Budget],
    cfg: &BenchConfig,
    layout: &nuwa::layout::VisualLayout,
) -> Result<Vec<Config>> {
    use clap::ValueEnum;
    let text = bench::PREFIX_TOKENS + bench::SUFFIX_TOKENS;
    let mut methods = vec![("none".to_string(), Method::NONE)];
    let mut seen_methods = Vec::new();
    for &p in &args.prune {
        if p == PruneArg::None || seen_methods.contains(&p) {
            continue;
        }
        if p == PruneArg::Manual {
            bail!("--prune manual is not supported by bench (it keeps a fixed list of patches, not a budget)");
        }
        seen_methods.push(p);
        let name = p.to_possible_value().expect("every method has a name").get_name().to_string();
        let mut seen = Vec::new();
        for &budget in budgets {
            if seen.contains(&budget) {
                continue;
            }
            seen.push(budget);
            match budget {
                Budget::Tokens(n) if p == PruneArg::Nuwa && cfg.family() == MERGED_GRID_FAMILY => bail!(
                    "--budgets {n}: Nüwa on {MERGED_GRID_FAMILY} is set by a keep ratio (25%, 50% or 75%), not a \
                     token count"
                ),
                Budget::Percent(pct) if p != PruneArg::Nuwa => {
                    bail!("--budgets {pct}%: a keep ratio applies to nuwa only; {name} takes a token count such as 64")
                }
                _ => {}
            }
            let label = format!("{name}-{budget}");
            let spec = PruneSpec {
                stages: match args.stages {
                    StagesArg::Both => Stages::Both,
                    StagesArg::One => Stages::One,
                    StagesArg::Two => Stages::Two,
                },
                stage2_layer: args.stage2_layer,
                ..PruneSpec::at(&name, budget, args.seed)
            };
            methods.push((label, spec.method()?));
        }
    }
    methods
        .into_iter()
        .map(|(label, method)| {
            let schedule = TokenSchedule::new(cfg, layout, &method)?;
            let flops = bench::llm_flops(cfg.decoder(), &schedule, text);
            Ok(Config { label, method, schedule, flops })
        })
        .collect()
}

/// Round-robin over configurations (warm-ups first), so that a change in the machine's load between
/// the first and the last configuration shows up in every configuration's spread, not in the ratios.
fn measure_all(
    engine: &Engine,
    prompt: &nuwa::prompt::PromptTokens,
    pixels: &bench::BenchImage,
    configs: &[Config],
    runs: usize,
    warmup: usize,
    decode_tokens: usize,
) -> Result<Vec<Measured>> {
    let mut out: Vec<Measured> =
        configs.iter().map(|_| Measured { samples: Vec::new(), peak_rss: None, base_rss: None }).collect();
    let total = (runs + warmup) * configs.len();
    let mut done = 0;
    for round in 0..runs + warmup {
        let warm = round < warmup;
        for (c, m) in configs.iter().zip(out.iter_mut()) {
            memory::release_free_memory();
            let base = memory::rss_bytes();
            let can_reset = memory::reset_peak();
            let s = bench::measure(engine, prompt, pixels, &c.method, decode_tokens)
                .with_context(|| format!("measuring {}", c.label))?;
            done += 1;
            eprintln!(
                "[{done}/{total}] {} {}: vision {:.1} ms, stage-1 {:.2} ms, LLM prefill {:.1} ms, TTFT {:.1} ms, decode {:.1} ms/token",
                if warm { "warm-up" } else { "run" },
                c.label,
                s.vision_ms,
                s.stage1_ms,
                s.llm_prefill_ms,
                s.ttft_ms,
                s.decode_ms_per_token
            );
            if !warm {
                if can_reset {
                    let peak = memory::peak_rss_bytes();
                    m.peak_rss = m.peak_rss.max(peak);
                    m.base_rss = match (m.base_rss, base) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                m.samples.push(s);
            }
        }
    }
    Ok(out)
}

fn flops_entry(c: &Config, baseline: &Flops) -> Value {
    json!({
        "vision_only_tflops": c.flops.vision_only_tflops(),
        "total_tflops": c.flops.total_tflops(),
        "vision_only_ratio": bench::ratio(c.flops.vision_only, baseline.vision_only),
        "total_ratio": bench::ratio(c.flops.total, baseline.total),
    })
}

fn config_json(d: &Description, c: &Config) -> Value {
    json!({
        "label": c.label,
        "prune": c.method.name(),
        "budget": c.method.budget(),
        "keep_ratio": c.method.keep_ratio(d.cfg.family()),
        "k1": c.schedule.k1,
        "k2": c.schedule.k2,
        "stage2_layer": c.schedule.cut_layer,
        "mean_vision_tokens": c.schedule.mean_tokens(),
        "vision_tokens_per_layer": c.schedule.per_layer,
    })
}

fn flops_json(d: &Description, configs: &[Config]) -> Value {
    let baseline = configs[0].flops;
    let results: Vec<Value> = configs
        .iter()
        .map(|c| {
            let mut v = config_json(d, c);
            v["flops"] = flops_entry(c, &baseline);
            v
        })
        .collect();
    json!({
        "model": d.model_json(),
        "flop_model": flop_model_json(d),
        "results": results,
        "flops": top_level_flops(configs),
    })
}

/// The widths of the FLOP model: H, I, Q = heads · head_dim, KV = KV heads · head_dim.
fn flop_widths(d: &Description) -> [usize; 4] {
    let t = d.cfg.decoder();
    [t.hidden_size, t.intermediate_size, t.num_attention_heads * t.head_dim(), t.num_key_value_heads() * t.head_dim()]
}

fn flop_model_json(d: &Description) -> Value {
    let [h, i, q, kv] = flop_widths(d);
    json!({
        "per_layer": "4*S*H*(Q+KV) + 4*S^2*Q + 4*S*H*I (8*S*H^2 + 4*S^2*H + 4*S*H*I when Q = KV = H), summed over \
                      decoder layers, 1 TFLOP = 1e12",
        "vision_only": "S = vision tokens entering the layer",
        "total": format!("S = {} prefix + vision + {} suffix tokens", bench::PREFIX_TOKENS, bench::SUFFIX_TOKENS),
        "H": h,
        "I": i,
        "Q": q,
        "KV": kv,
        "layers": d.cfg.decoder().num_hidden_layers,
    })
}

/// `{"vision_only_tflops": {label: x}, "total_tflops": {label: y}}`.
fn top_level_flops(configs: &[Config]) -> Value {
    let map = |f: fn(&Flops) -> f64| -> Value {
        Value::Object(configs.iter().map(|c| (c.label.clone(), json!(f(&c.flops)))).collect())
    };
    json!({ "vision_only_tflops": map(Flops::vision_only_tflops), "total_tflops": map(Flops::total_tflops) })
}

fn report_json(d: &Description, configs: &[Config], measured: &[Measured], prefix: usize, suffix: usize) -> Value {
    let stat = |m: &Measured, f: fn(&Sample) -> f64| -> Summary {
        Summary::of(&m.samples.iter().map(f).collect::<Vec<_>>()).expect("at least one run")
    };
    let base = &measured[0];
    let base_kv = base.samples[0].kv_cache_bytes as f64;
    let base_kv_prefill = base.samples[0].kv_cache_prefill_bytes as f64;
    let results: Vec<Value> = configs
        .iter()
        .zip(measured)
        .map(|(c, m)| {
            let mut median = serde_json::Map::new();
            let mut min = serde_json::Map::new();
            let mut max = serde_json::Map::new();
            let mut ratio = serde_json::Map::new();
            for (key, _, f) in TIMES {
                let s = stat(m, f);
                median.insert(key.into(), json!(s.median));
                min.insert(key.into(), json!(s.min));
                max.insert(key.into(), json!(s.max));
                ratio.insert(key.into(), json!(bench::ratio(s.median, stat(base, f).median)));
            }
            let kv = m.samples[0].kv_cache_bytes as f64;
            let kv_prefill = m.samples[0].kv_cache_prefill_bytes as f64;
            ratio.insert("kv_cache".into(), json!(bench::ratio(kv, base_kv)));
            ratio.insert("kv_cache_prefill".into(), json!(bench::ratio(kv_prefill, base_kv_prefill)));
            let stage1_share = bench::ratio(stat(m, |s| s.stage1_ms).median, stat(m, |s| s.vision_ms).median);
            let mut v = config_json(d, c);
            let o = v.as_object_mut().expect("object");
            // What the pipeline kept, next to the schedule the FLOPs are computed from.
            o.insert("measured_k1".into(), json!(m.samples[0].k1));
            o.insert("measured_k2".into(), json!(m.samples[0].k2));
            o.insert("runs".into(), json!(m.samples.len()));
            o.insert("median_ms".into(), Value::Object(median));
            o.insert("min_ms".into(), Value::Object(min));
            o.insert("max_ms".into(), Value::Object(max));
            o.insert("ratio_to_unpruned".into(), Value::Object(ratio));
            o.insert("stage1_share_of_vision".into(), json!(stage1_share));
            o.insert("kv_cache_bytes".into(), json!(m.samples[0].kv_cache_bytes));
            o.insert("kv_cache_prefill_bytes".into(), json!(m.samples[0].kv_cache_prefill_bytes));
            o.insert("peak_rss_bytes".into(), json!(m.peak_rss));
            o.insert(
                "peak_rss_above_start_bytes".into(),
                json!(m.peak_rss.zip(m.base_rss).map(|(p, b)| p.saturating_sub(b))),
            );
            o.insert("flops".into(), flops_entry(c, &configs[0].flops));
            v
        })
        .collect();
    json!({
        "model": d.model_json(),
        "machine": {
            "cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
            "memory_bytes": memory::total_bytes(),
        },
        "settings": {
            "runs": d.runs,
            "warmup": d.warmup,
            "decode_tokens": d.args.decode_tokens,
            "prefix_tokens": prefix,
            "suffix_tokens": suffix,
        },
        "flop_model": flop_model_json(d),
        "results": results,
        "flops": top_level_flops(configs),
    })
}

// ---------------------------------------------------------------------------------------------------
// Text output
// ---------------------------------------------------------------------------------------------------

fn print_flops(d: &Description, configs: &[Config]) {
    let [h, i, q, kv] = flop_widths(d);
    println!("{} — {}", d.model_name(), d.depth());
    println!(
        "FLOP model of the decoder's prefill, per layer 4·S·H·(Q + KV) + 4·S²·Q + 4·S·H·I (H = {h}, I = {i}, Q = {q}, \
         KV = {kv}; 8·S·H² + 4·S²·H + 4·S·H·I when Q = KV = H), summed over {} layers",
        d.cfg.decoder().num_hidden_layers
    );
    println!(
        "  vision-only: S = vision tokens in the layer; total: S = {} prefix + vision + {} suffix tokens\n",
        bench::PREFIX_TOKENS,
        bench::SUFFIX_TOKENS
    );
    let base = configs[0].flops;
    let mut rows =
        vec![row(&["config", "K1", "K2", "cut", "mean vis", "vision-only TFLOPs", "ratio", "total TFLOPs", "ratio"])];
    for c in configs {
        let (k2, cut) = cut_cells(&c.schedule);
        rows.push(vec![
            c.label.clone(),
            c.schedule.k1.to_string(),
            k2,
            cut,
            format!("{:.1}", c.schedule.mean_tokens()),
            sig4(c.flops.vision_only_tflops()),
            ratio_cell(bench::ratio(c.flops.vision_only, base.vision_only)),
            sig4(c.flops.total_tflops()),
            ratio_cell(bench::ratio(c.flops.total, base.total)),
        ]);
    }
    print_table(&rows);
    paper_note(d, configs);
}

/// For the full-depth LLaVA-1.5-7B shapes, what the paper printed next to what the formula gives.
fn paper_note(d: &Description, configs: &[Config]) {
    let full = matches!(d.source, Source::Preset(Preset::Llava15_7b))
        && d.cfg.depths().0 == d.full_depth.0
        && matches!(d.args.stages, StagesArg::Both)
        && d.args.stage2_layer.is_none();
    if !full {
        return;
    }
    let b64 = configs.iter().find(|c| matches!(&c.method, Method::Nuwa(n) if n.budget == 64));
    println!(
        "\npaper (Table 6, LLaVA-1.5-7B, vision tokens only): 5.973 TFLOPs unpruned, 0.6476 at budget 64; \
         this formula: {:.6} and {}",
        configs[0].flops.vision_only_tflops(),
        b64.map_or("-".into(), |c| format!("{:.7}", c.flops.vision_only_tflops()))
    );
}

fn print_report(d: &Description, report: &Value) {
    let results = report["results"].as_array().expect("results");
    println!("{} — {}, {:?}, {:?}", d.model_name(), d.depth(), d.args.dtype, d.args.device);
    if let Some((w, h)) = d.image_size {
        println!("image: {w}×{h} pixels as the model encodes it");
    }
    println!(
        "prompt: {} tokens + {} image positions + {} tokens; {} run(s) after {} warm-up(s); {} decode step(s)\n",
        report["settings"]["prefix_tokens"],
        d.image_tokens,
        report["settings"]["suffix_tokens"],
        d.runs,
        d.warmup,
        d.args.decode_tokens
    );
    let cells = |r: &Value| -> Vec<String> {
        vec![r["label"].as_str().unwrap_or("?").to_string(), r["k1"].to_string(), opt_cell(&r["k2"])]
    };
    for (title, key) in [("median ms", "median_ms"), ("min ms", "min_ms"), ("max ms", "max_ms")] {
        println!("{title}");
        let mut header = vec!["config".to_string(), "K1".into(), "K2".into()];
        header.extend(TIMES.iter().map(|t| t.1.to_string()));
        let mut rows = vec![header];
        for r in results {
            let mut row = cells(r);
            row.extend(TIMES.iter().map(|t| ms_cell(r[key][t.0].as_f64())));
            rows.push(row);
        }
        print_table(&rows);
        println!();
    }
    println!("memory and FLOPs");
    let mut rows = vec![row(&[
        "config",
        "K1",
        "K2",
        "KV cache",
        "KV prefill",
        "peak RSS",
        "peak above start",
        "TFLOPs vision",
        "TFLOPs total",
    ])];
    for r in results {
        let mut row = cells(r);
        row.push(bytes_cell(&r["kv_cache_bytes"]));
        row.push(bytes_cell(&r["kv_cache_prefill_bytes"]));
        row.push(bytes_cell(&r["peak_rss_bytes"]));
        row.push(bytes_cell(&r["peak_rss_above_start_bytes"]));
        row.push(sig4(r["flops"]["vision_only_tflops"].as_f64().unwrap_or(f64::NAN)));
        row.push(sig4(r["flops"]["total_tflops"].as_f64().unwrap_or(f64::NAN)));
        rows.push(row);
    }
    print_table(&rows);
    println!("\nratio to unpruned (medians, same process)");
    let mut header = vec!["config".to_string(), "K1".into(), "K2".into()];
    header.extend(TIMES.iter().map(|t| t.1.to_string()));
    header.extend(["KV cache".to_string(), "TFLOPs vision".into(), "TFLOPs total".into(), "stage-1/vision".into()]);
    let mut rows = vec![header];
    for r in results {
        let mut row = cells(r);
        let ratio = &r["ratio_to_unpruned"];
        row.extend(TIMES.iter().map(|t| ratio_cell(ratio[t.0].as_f64())));
        row.push(ratio_cell(ratio["kv_cache"].as_f64()));
        row.push(ratio_cell(r["flops"]["vision_only_ratio"].as_f64()));
        row.push(ratio_cell(r["flops"]["total_ratio"].as_f64()));
        row.push(r["stage1_share_of_vision"].as_f64().map_or("-".into(), |v| format!("{:.2} %", 100.0 * v)));
        rows.push(row);
    }
    print_table(&rows);
    goals(results);
}

/// The targets for budget 64, when it was measured.
fn goals(results: &[Value]) {
    let Some(r) = results.iter().find(|r| r["prune"] == "nuwa" && r["budget"] == 64) else {
        return;
    };
    let ratio = &r["ratio_to_unpruned"];
    let check = |name: &str, v: Option<f64>, limit: f64, pct: bool| {
        let shown = |x: f64| if pct { format!("{:.2} %", 100.0 * x) } else { format!("{x:.3}×") };
        match v {
            Some(v) => println!(
                "  {name}: {} (goal ≤ {}) {}",
                shown(v),
                shown(limit),
                if v <= limit { "met" } else { "MISSED" }
            ),
            None => println!("  {name}: not measured"),
        }
    };
    println!("\ngoals at budget 64");
    check("LLM prefill vs unpruned", ratio["llm_prefill"].as_f64(), 0.25, false);
    check("vision + LLM prefill vs unpruned", ratio["prefill"].as_f64(), 0.38, false);
    check("stage-1 overhead / vision encoder", r["stage1_share_of_vision"].as_f64(), 0.03, true);
    check("KV cache vs unpruned", ratio["kv_cache"].as_f64(), 0.25, false);
}

fn cut_cells(s: &TokenSchedule) -> (String, String) {
    (s.k2.map_or("-".into(), |k| k.to_string()), s.cut_layer.map_or("-".into(), |l| l.to_string()))
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|s| s.to_string()).collect()
}

fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| if i == 0 { format!("{s:<w$}", w = widths[i]) } else { format!("{s:>w$}", w = widths[i]) })
            .collect();
        println!("  {}", line.join("  "));
    }
}

/// Four significant digits.
fn sig4(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    if v == 0.0 {
        return "0".into();
    }
    let digits = (3 - v.abs().log10().floor() as i64).max(0) as usize;
    format!("{v:.digits$}")
}

fn ms_cell(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 1.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
        None => "-".into(),
    }
}

fn ratio_cell(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.3}"))
}

fn opt_cell(v: &Value) -> String {
    if v.is_null() {
        "-".into()
    } else {
        v.to_string()
    }
}

fn bytes_cell(v: &Value) -> String {
    v.as_u64().map_or("-".into(), human_bytes)
}

fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

fn human_count(n: usize) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} M", n / 1e6)
    } else {
        format!("{:.0}", n)
    }
}
