"""Interleaved side-by-side benchmark: transformers (in this process, after warm-up) vs nuwa (one process per run)
vs llama.cpp's llama-mtmd-cli (one process per run), same weights, image, prompt and 2 threads.

Each round runs every configuration once (order reversed on odd rounds so drift hits both ends alike);
round 0..warmup-1 are unmeasured warm-ups. Every run appends one JSON line to --out.

Usage (see README.md beside this file):
  python run_bench.py --ckpt CKPT --image IMG --nuwa path/to/nuwa --rounds 5 --warmup 1 --configs tf-sdpa-f32,tf-eager-f32,nuwa-none-f32,nuwa-64-f32,llamacpp-f32 --out results/f32.jsonl
"""
import argparse, json, os, re, subprocess, sys, time
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--ckpt", required=True)
ap.add_argument("--image", required=True)
ap.add_argument("--prompt", default="What is shown in this image?")
ap.add_argument("--new-tokens", type=int, default=16)
ap.add_argument("--rounds", type=int, default=5)
ap.add_argument("--warmup", type=int, default=1)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--warmup-configs", default=None,
                help="comma-separated configs that run in the warm-up rounds (default: all); the process engines "
                     "start cold in every run anyway, so warming them only re-reads the page cache")
ap.add_argument("--configs", required=True)
ap.add_argument("--nuwa", default="target/release/nuwa")
ap.add_argument("--llamacpp-bin", default="llama.cpp/build/bin")
ap.add_argument("--gguf-dir", default="gguf")
ap.add_argument("--out", required=True)
args = ap.parse_args()
configs = args.configs.split(",")
os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions.")
out_path = Path(args.out)
out_path.parent.mkdir(parents=True, exist_ok=True)


def loadavg():
    return [round(x, 2) for x in os.getloadavg()]


def parse_time_v(text):
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    secs = None
    if wall:
        parts = [float(p) for p in wall.group(1).split(":")]
        secs = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    usr = re.search(r"User time \(seconds\): ([\d.]+)", text)
    sys_ = re.search(r"System time \(seconds\): ([\d.]+)", text)
    return {"peak_rss_mib": int(rss.group(1)) / 1024 if rss else None, "wall_s": secs,
            "user_s": float(usr.group(1)) if usr else None, "sys_s": float(sys_.group(1)) if sys_ else None}


# ------------------------------------------------------------------------------------------------ transformers
TF = {}
if any(c.startswith("tf-") for c in configs):
    import torch
    from transformers import LlavaForConditionalGeneration, CLIPImageProcessor, DynamicCache
    from tokenizers import Tokenizer
    from PIL import Image
    torch.set_num_threads(args.threads)
    tok = Tokenizer.from_file(str(Path(args.ckpt) / "tokenizer.json"))
    prefix = tok.encode(f"{SYSTEM} USER: ", add_special_tokens=True).ids
    suffix = tok.encode(f"\n{args.prompt} ASSISTANT:", add_special_tokens=False).ids
    proc = CLIPImageProcessor.from_pretrained(args.ckpt)
    pixel_values = proc(images=Image.open(args.image).convert("RGB"), return_tensors="pt")["pixel_values"]
    N_IMG = 576
    ids = torch.tensor([prefix + [32000] * N_IMG + suffix])
    img_mask = ids[0] == 32000
    print(f"[tf] prompt: {len(prefix)} + {N_IMG} + {len(suffix)} = {ids.shape[1]} tokens", flush=True)
    models = {}
    for c in configs:
        if not c.startswith("tf-"):
            continue
        dt = c.split("-")[-1]
        if dt not in models:
            t = time.time()
            models[dt] = LlavaForConditionalGeneration.from_pretrained(
                args.ckpt, dtype={"f32": torch.float32, "bf16": torch.bfloat16}[dt], attn_implementation="sdpa").eval()
            print(f"[tf] loaded {dt} in {time.time() - t:.1f}s", flush=True)

    def tf_run(cfg):
        _, attn, dt = cfg.split("-")
        m = models[dt]
        m.set_attn_implementation(attn)
        assert m.model.language_model.config._attn_implementation == attn
        assert m.model.vision_tower.config._attn_implementation == attn
        pv = pixel_values.to(m.dtype)
        lm, vt = m.model.language_model, m.model.vision_tower
        r = {}
        with torch.inference_mode():
            t = time.perf_counter()
            vo = vt(pv, output_hidden_states=True)
            feat = vo.hidden_states[-2][:, 1:]
            r["vision_tower_ms"] = (time.perf_counter() - t) * 1e3
            t = time.perf_counter()
            img = m.model.multi_modal_projector(feat)
            r["projector_ms"] = (time.perf_counter() - t) * 1e3
            if attn == "sdpa":
                # Like-for-like with nuwa --prune none and llama.cpp, which stop after encoder layer 23
                # (vision_feature_layer -2): the same tower with its last layer removed.
                layers = vt.encoder.layers
                vt.encoder.layers = torch.nn.ModuleList(list(layers)[:-1])
                try:
                    t = time.perf_counter()
                    f23 = vt(pv).last_hidden_state[:, 1:]
                    r["vision_tower_23l_ms"] = (time.perf_counter() - t) * 1e3
                finally:
                    vt.encoder.layers = layers
                if not TF.get("checked_" + cfg):
                    err = (f23.float() - feat.float()).abs().max().item()
                    print(f"[tf] {cfg}: 23-layer output vs hidden_states[-2] max abs diff {err:.3g}", flush=True)
                    TF["checked_" + cfg] = True
            embeds = lm.embed_tokens(ids)
            embeds[0, img_mask] = img[0].to(embeds.dtype)
            cache = DynamicCache(config=m.config.text_config)
            t = time.perf_counter()
            h = lm(inputs_embeds=embeds, past_key_values=cache, use_cache=True).last_hidden_state
            logits = m.lm_head(h[:, -1])
            r["prefill_ms"] = (time.perf_counter() - t) * 1e3
            nxt = logits.argmax(-1)
            toks = [int(nxt)]
            t = time.perf_counter()
            for _ in range(args.new_tokens - 1):
                h = lm(input_ids=nxt.view(1, 1), past_key_values=cache, use_cache=True).last_hidden_state
                nxt = m.lm_head(h[:, -1]).argmax(-1)
                toks.append(int(nxt))
            r["decode_per_token_ms"] = (time.perf_counter() - t) * 1e3 / (args.new_tokens - 1)
        r["vision_plus_projector_ms"] = r["vision_tower_ms"] + r["projector_ms"]
        r["tokens"] = toks
        r["seq_len"] = int(ids.shape[1])
        return r


# ------------------------------------------------------------------------------------------------ nuwa
def nuwa_run(cfg):
    _, prune, dt = cfg.split("-")
    cmd = ["/usr/bin/time", "-v", args.nuwa, "generate", "--model", args.ckpt, "--image", args.image,
           "--prompt", args.prompt, "--max-new-tokens", str(args.new_tokens), "--json"]
    # nuwa-none-q8_0 / nuwa-64-q4_k: f32 activations with weights quantised at load.
    cmd += ["--quantize", dt] if dt in ("q8_0", "q4_k") else ["--dtype", dt]
    cmd += ["--prune", "none"] if prune == "none" else ["--prune", "nuwa", "--budget", prune]
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if p.returncode != 0:
        raise RuntimeError(f"{cfg} failed: {p.stderr[-2000:]}")
    j = json.loads(p.stdout)
    tm = j["timings_ms"]
    r = {"vision_ms": tm["vision"], "stage1_ms": tm["stage1"], "prefill_ms": tm["prefill"],
         "decode_per_token_ms": tm["decode_per_token"], "tokens": j["tokens"], "n_tokens": len(j["tokens"]),
         "stop_reason": j["stop_reason"], "prompt_tokens": j["prompt_tokens"],
         "avg_vision_tokens": j["vision"]["avg_vision_tokens"], "k1": j["vision"]["k1"], "k2": j["vision"]["k2"],
         "kv_cache_bytes": j["kv_cache_bytes"]}
    r.update(parse_time_v(p.stderr))
    return r


# ------------------------------------------------------------------------------------------------ llama.cpp
def llamacpp_run(cfg):
    dt = cfg.split("-")[-1]
    text = f"{args.gguf_dir}/text-{dt}.gguf"
    mmproj = f"{args.gguf_dir}/mmproj-{dt}/mmproj-model-{dt}.gguf"
    cmd = ["/usr/bin/time", "-v", f"{args.llamacpp_bin}/llama-mtmd-cli", "-m", text, "--mmproj", mmproj,
           "--image", args.image, "-sys", SYSTEM, "-p", "<__media__>\n" + args.prompt, "-n", str(args.new_tokens), "-t", str(args.threads),
           "--temp", "0", "--ignore-eos", "-c", "2048", "--chat-template", "vicuna", "--seed", "0", "--perf", "-lv", "4"]
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise RuntimeError(f"{cfg} failed: {p.stderr[-3000:]}")
    e = p.stderr
    r = {}
    m = re.search(r"mtmd batch encoding done in (\d+) ms", e) or re.search(r"image slice encoded in (\d+) ms", e)
    r["image_encode_ms"] = float(m.group(1)) if m else None
    m = re.search(r"image decoded \(batch 1/1\) in (\d+) ms", e)
    r["image_tokens_decode_ms"] = float(m.group(1)) if m else None
    m = re.search(r"prompt eval time =\s+([\d.]+) ms /\s+(\d+) tokens", e)
    r["prompt_eval_ms"], r["prompt_eval_tokens"] = (float(m.group(1)), int(m.group(2))) if m else (None, None)
    m = re.search(r"\beval time =\s+([\d.]+) ms /\s+(\d+) runs", e)
    r["eval_ms"], r["eval_runs"] = (float(m.group(1)), int(m.group(2))) if m else (None, None)
    r["decode_per_token_ms"] = r["eval_ms"] / r["eval_runs"] if m and r["eval_runs"] else None
    m = re.search(r"load time =\s+([\d.]+) ms", e)
    r["load_ms"] = float(m.group(1)) if m else None
    # llama.cpp accumulates "prompt eval time" from the first prompt decode to the first logits read, so in
    # mtmd-cli it also contains the image encode that happens between the text and image decodes.
    r["prefill_ms"] = r["prompt_eval_ms"] - r["image_encode_ms"] if r["prompt_eval_ms"] and r["image_encode_ms"] else None
    r.update(parse_time_v(e))
    r["stdout_tail"] = p.stdout[-300:]
    return r


def gemm_run(cfg):
    if cfg != "gemm-torch":
        raise ValueError(f"{cfg}: only gemm-torch is measured here")
    cmd = [sys.executable, str(Path(__file__).with_name("gemm_torch.py")), str(args.threads), "3"]
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if p.returncode != 0:
        raise RuntimeError(f"{cfg} failed: {p.stderr[-2000:]}")
    r = {}
    for line in p.stdout.splitlines():
        if cfg == "gemm-torch" and not line.startswith("{") and "{" in line:
            key, js = line.split(" {", 1)
            d = json.loads("{" + js)
        elif cfg == "gemm-candle" and line.startswith("{"):
            d = json.loads(line)
            key = f"{d['dtype'].lower().replace('bf16', 'bfloat16').replace('f32', 'float32')} {d['shape']}"
        else:
            continue
        r[key.replace(" ", "_") + "_gflops"] = d["gflops_median"]
        r[key.replace(" ", "_") + "_ms"] = d["median_ms"]
        r[key.replace(" ", "_") + "_weight_gbps"] = d["weight_gbps_median"]
    return r


def llamabench_run(cfg):
    dt = cfg.split("-")[-1]
    # llamabench-tg-DT: token generation only, from an empty cache (llama.cpp 0.3.36's CPU build crashes on
    # q8_0 prompt batches on an AMX machine); llamabench-tgd-DT: token generation after a cache of the
    # prompt's length (`-d`), as nuwa decodes after its prompt.
    pp = 0 if cfg.startswith(("llamabench-tg-", "llamabench-tgd-")) else LLAMABENCH_PP
    cmd = [f"{args.llamacpp_bin}/llama-bench", "-m", f"{args.gguf_dir}/text-{dt}.gguf", "-p", str(pp),
           "-n", str(args.new_tokens), "-t", str(args.threads), "-r", "1", "-o", "json"]
    if cfg.startswith("llamabench-tgd-"):
        cmd += ["-d", str(LLAMABENCH_PP)]
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if p.returncode != 0:
        raise RuntimeError(f"{cfg} failed: {p.stderr[-2000:]}")
    j = json.loads(p.stdout)
    r = {}
    for t in j:
        if t["n_prompt"] > 0:
            r["prefill_ms"] = t["avg_ns"] / 1e6
            r["pp_tokens"] = t["n_prompt"]
        elif t["n_gen"] > 0:
            r["decode_per_token_ms"] = t["avg_ns"] / 1e6 / t["n_gen"]
    return r


LLAMABENCH_PP = 625


def run(cfg):
    if cfg.startswith("llamabench-"):
        return llamabench_run(cfg)
    if cfg.startswith("gemm-"):
        return gemm_run(cfg)
    if cfg.startswith("tf-"):
        return tf_run(cfg)
    if cfg.startswith("nuwa-"):
        return nuwa_run(cfg)
    if cfg.startswith("llamacpp-"):
        return llamacpp_run(cfg)
    raise ValueError(cfg)


with open(out_path, "a") as f:
    f.write(json.dumps({"meta": {"argv": sys.argv, "configs": configs, "start": time.time(), "loadavg": loadavg(),
                                 "env": {k: os.environ.get(k) for k in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS")}}}) + "\n")
    for rnd in range(args.warmup + args.rounds):
        order = configs if rnd % 2 == 0 else configs[::-1]
        if rnd < args.warmup and args.warmup_configs:
            order = [c for c in order if c in args.warmup_configs.split(",")]
        for cfg in order:
            la0 = loadavg()
            t = time.time()
            try:
                r = run(cfg)
                err = None
            except Exception as ex:  # keep going: one failure must not lose the run
                r, err = {}, repr(ex)[-2000:]
            rec = {"round": rnd, "warmup": rnd < args.warmup, "config": cfg, "t_start": t, "elapsed_s": time.time() - t,
                   "loadavg_before": la0, "loadavg_after": loadavg(), "error": err, **r}
            f.write(json.dumps(rec) + "\n")
            f.flush()
            short = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in rec.items()
                     if k.endswith("_ms") or k in ("peak_rss_mib", "wall_s", "error")}
            print(f"[{time.strftime('%H:%M:%S')}] round {rnd}{' (warm-up)' if rnd < args.warmup else ''} {cfg}: "
                  f"{json.dumps(short)} load {la0}", flush=True)
print("done", flush=True)
