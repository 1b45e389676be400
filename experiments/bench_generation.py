"""Plain HF `generate` vs our streaming decode loop (KV cache + tap hook) -> results/generation.json.

Same loaded model, same prompt, greedy, the same number of new tokens; the two are interleaved
(plain, ours, plain, ours, ...) after one warm-up each, so load from other processes hits both
alike; the median of the repeats is reported. Our loop's tokens come out with their tap-layer
hidden state; no probes are scored here (that is the monitored benchmark's job).

    python -m experiments.bench_generation [--tokens 64] [--repeats 3] [--layer 9]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from hatcat.config import EMBEDDED_DEFAULT
from hatcat.generation import GenerationSettings, collect, generate, stop_token_ids
from hatcat.model import load_model

OUT = Path(__file__).resolve().parents[1] / "results" / "generation.json"
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layer", type=int, default=9, help="tap layer for our loop")
    parser.add_argument("--model", default=EMBEDDED_DEFAULT)
    args = parser.parse_args()

    loaded = load_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    inputs = tokenizer(PROMPT, return_tensors="pt").to(loaded.device)
    eos = sorted(stop_token_ids(model, tokenizer))
    settings = GenerationSettings(max_tokens=args.tokens, temperature=0)

    def plain() -> tuple[float, list[int]]:
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=args.tokens, do_sample=False, eos_token_id=eos)
        _sync(loaded.device)
        ids = out[0, inputs.input_ids.shape[1] :].tolist()
        return len(ids) / (time.perf_counter() - start), ids

    def ours() -> tuple[float, list[int]]:
        start = time.perf_counter()
        _, steps, finished = collect(generate(model, tokenizer, PROMPT, settings, tap_layer=args.layer))
        _sync(loaded.device)
        return finished.completion_tokens / (time.perf_counter() - start), [s.token_id for s in steps]

    load_before = os.getloadavg()[0]
    plain(), ours()  # warm-up
    plain_runs, our_runs = [], []
    for _ in range(args.repeats):
        plain_runs.append(plain())
        our_runs.append(ours())
    plain_ids, our_ids = plain_runs[0][1], our_runs[0][1]
    plain_tok_s = statistics.median(r[0] for r in plain_runs)
    ours_tok_s = statistics.median(r[0] for r in our_runs)
    result = {
        "model": args.model,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "prompt_tokens": int(inputs.input_ids.shape[1]),
        "new_tokens": len(our_ids),
        "repeats": args.repeats,
        "tap_layer": args.layer,
        "plain_generate_tok_s": round(plain_tok_s, 2),
        "stream_loop_tok_s": round(ours_tok_s, 2),
        "stream_over_plain": round(ours_tok_s / plain_tok_s, 3),
        "plain_runs_tok_s": [round(r[0], 2) for r in plain_runs],
        "stream_runs_tok_s": [round(r[0], 2) for r in our_runs],
        "same_tokens_as_generate": plain_ids == our_ids,
        "sample": tokenizer.decode(our_ids, skip_special_tokens=True)[:200],
        "machine": {"threads": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__},
        # 1-minute load average before and after: above the thread count, other processes shared the CPU.
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
