"""Generation speed three ways, in one run -> results/bench_generation.json.

1. plain: transformers' `generate` (greedy, KV cache), in the default dtype and in fp32;
2. monitored: our stream as served (the engine's batch scheduler, a batch of one) with the full shipped probe pack — every concept, activation and
   words-only side, hierarchy policy and top-k on every token (the default configuration);
3. reference: a re-creation of the original's per-token loop: no KV cache (the whole sequence
   again for every token), `output_hidden_states` for all layers, and 100 small MLP probes
   (hidden -> 128 -> 64 -> 1) scored one at a time with a `.item()` each.

Each way produces the same number of new tokens; the median of `--repeats` runs is reported.

    python -m experiments.bench_generation [--tokens 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from torch import nn

from experiments.machine import machine, now
from hatcat.config import Settings
from hatcat.engine import Engine
from hatcat.generation import GenerationSettings, MonitoredToken
from hatcat.model import load_model
from hatcat.paths import RESULTS

OUT = RESULTS / "bench_generation.json"
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def timed(fn) -> tuple[float, int]:
    start = time.perf_counter()
    produced = fn()
    return time.perf_counter() - start, produced


@torch.inference_mode()
def plain(model, tokenizer, tokens: int) -> int:
    inputs = tokenizer(PROMPT, return_tensors="pt").to(model.device)
    out = model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    return out.shape[1] - inputs.input_ids.shape[1]


def monitored(engine: Engine, tokens: int) -> int:
    """One stream as served: through the engine's batch scheduler (a batch of one)."""
    settings = GenerationSettings(max_tokens=tokens, temperature=0)
    return sum(isinstance(e, MonitoredToken) for e in engine.generate(PROMPT, settings))


def reference_probes(hidden: int, n: int = 100) -> list[nn.Module]:
    torch.manual_seed(0)
    return [
        nn.Sequential(nn.Linear(hidden, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 1)).eval()
        for _ in range(n)
    ]


@torch.inference_mode()
def reference(model, tokenizer, probes: list[nn.Module], layer: int, tokens: int) -> int:
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids.to(model.device)
    for _ in range(tokens):
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
        state = out.hidden_states[layer + 1][0, -1].float()
        _scores = [torch.sigmoid(probe(state)).item() for probe in probes]  # one probe at a time
        ids = torch.cat([ids, out.logits[:, -1:].argmax(-1)], dim=1)
    return tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per generation")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    engine = Engine.from_settings(Settings.from_env())
    if engine.monitor is None:
        raise SystemExit("no probe pack loaded: train one (python -m hatcat.train) or set HATCAT_PROBE_PACK")
    fp32 = load_model(
        engine.loaded.name, device=str(engine.loaded.device), dtype="float32", cache_dir=engine.settings.cache_dir
    )
    probes = [p.to(engine.loaded.device) for p in reference_probes(engine.loaded.hidden_size)]
    n = args.tokens
    n = monitored(engine, n)  # warm-up; also fixes the token count (a stream may end at EOS)
    ways = {
        "plain": lambda: plain(engine.model, engine.tokenizer, n),
        "plain_fp32": lambda: plain(fp32.model, fp32.tokenizer, n),
        "monitored": lambda: monitored(engine, n),
        "reference": lambda: reference(engine.model, engine.tokenizer, probes, engine.bank.tap_layer, n),
    }
    for fn in ways.values():  # every way once unmeasured: a GPU's first pass over new shapes runs far slower
        fn()
    speed: dict[str, list[float]] = {name: [] for name in ways}
    load_before = os.getloadavg()  # on a shared machine absolute rates move with the neighbours
    for _ in range(args.repeats):  # interleaved, so drift in machine speed hits every way alike
        for name, fn in ways.items():
            seconds, produced = timed(fn)
            speed[name].append(produced / seconds)
            print(f"{name}: {produced / seconds:.2f} tok/s", flush=True)
    med = {name: statistics.median(values) for name, values in speed.items()}
    result = {
        "model": engine.loaded.name,
        "device": str(engine.loaded.device),
        "dtype": str(engine.loaded.dtype).removeprefix("torch."),
        "n_concepts": len(engine.bank),
        "new_tokens": n,
        "repeats": args.repeats,
        "plain_tok_s": round(med["plain"], 2),
        "plain_fp32_tok_s": round(med["plain_fp32"], 2),
        "monitored_tok_s": round(med["monitored"], 2),
        "reference_tok_s": round(med["reference"], 2),
        "monitored_over_plain": round(med["monitored"] / med["plain"], 3),
        "monitored_over_reference": round(med["monitored"] / med["reference"], 2),
        "default_over_plain_fp32": round(med["monitored"] / med["plain_fp32"], 2),
        "runs_tok_s": {name: [round(v, 2) for v in values] for name, values in speed.items()},
        "machine": machine(load_before),
        "measured_at": now(),
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs_tok_s"}, indent=2))


if __name__ == "__main__":
    main()
