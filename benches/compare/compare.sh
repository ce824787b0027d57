#!/usr/bin/env bash
# Interleaved side-by-side benchmark: transformers and nuwa on the same random-weight LLaVA-1.5 checkpoint
# with the real 7B widths (decoder trimmed to 4 layers), the same image, prompt and thread count.
# Usage: benches/compare/compare.sh [WORKDIR] [CONFIGS] [ROUNDS]   (THREADS=2 by default)
# First run: creates WORKDIR/venv (torch, transformers from PyPI, a few GB) and WORKDIR/ckpt (5.6 GB).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=${1:-$root/target/compare}
configs=${2:-tf-sdpa-f32,nuwa-none-f32,nuwa-64-f32,tf-sdpa-bf16,nuwa-none-bf16,nuwa-64-bf16}
rounds=${3:-3}
threads=${THREADS:-2}
mkdir -p "$work"
if [ ! -x "$work/venv/bin/python" ]; then
    python3 -m venv "$work/venv"
    "$work/venv/bin/pip" install torch transformers safetensors pillow tokenizers
fi
if [ ! -f "$work/ckpt/model.safetensors" ]; then
    "$work/venv/bin/python" "$here/make_ckpt.py" "$root/tests/fixtures/tiny-llava-1.5" "$work/ckpt" 4
fi
(cd "$root" && cargo build --release --locked -p nuwa-cli)
RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads "$work/venv/bin/python" "$here/run_bench.py" \
    --ckpt "$work/ckpt" --image "$work/ckpt/image.png" --nuwa "$root/target/release/nuwa" --threads "$threads" \
    --rounds "$rounds" --warmup 1 --configs "$configs" --out "$work/results.jsonl"
"$work/venv/bin/python" "$here/analyze.py" "$work/results.jsonl"
