"""Does a static KV cache + `torch.compile` speed up the monitored decode step? -> results/bench_compiled_step.json

The step measured is the monitored one: one single-token forward with the KV cache, the tap
layer's state, and the probe bank's matrix product over all concepts (activation side), in
eager mode with transformers' `DynamicCache` vs compiled (inductor) with a `StaticCache`; on a
GPU the compiled step is captured as CUDA graphs (`mode="reduce-overhead"`). The compile time
(first calls) is reported apart from the steady-state step. Ways are interleaved over
`--repeats` rounds; the median per-step time counts. The load average is recorded.

    python -m experiments.bench_compiled_step [--steps 24] [--repeats 3] [--batch 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import time
from pathlib import Path

import torch
from transformers import DynamicCache, StaticCache

from experiments.machine import machine, now
from hatcat.config import Settings
from hatcat.engine import Engine
from hatcat.paths import RESULTS

OUT = RESULTS / "bench_compiled_step.json"


def make_step(engine: Engine):
    model, bank = engine.model, engine.bank
    layer = bank.tap_layer
    cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def step(ids: torch.Tensor, positions: torch.Tensor, cache) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(
            input_ids=ids,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            output_hidden_states=True,
            **{cache_kwarg: cache},
        )
        hidden = out.hidden_states[layer + 1][:, -1].float()
        return out.logits[:, -1].float(), torch.sigmoid(hidden @ bank.act_weight.T + bank.act_bias)

    return step


@torch.inference_mode()
def run(step, engine: Engine, cache, batch: int, steps: int) -> tuple[float, list[float]]:
    """Prefill 16 tokens, then `steps` greedy steps; (first-step seconds, later steps' seconds).
    Each step ends when its token is known (a GPU is synchronised), as a decode loop needs it."""
    device = engine.loaded.device
    ids = torch.arange(100, 116, device=device).repeat(batch, 1)
    positions = torch.arange(16, device=device).repeat(batch, 1)
    logits, _probs = step(ids, positions, cache)
    token = logits.argmax(-1, keepdim=True)
    times = []
    for i in range(steps):
        start = time.perf_counter()
        logits, _probs = step(token, torch.full((batch, 1), 16 + i, device=device), cache)
        token = logits.argmax(-1, keepdim=True)
        token.tolist()  # the decode loop reads the token: this is where a GPU syncs
        times.append(time.perf_counter() - start)
    return times[0], times[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    load_before = os.getloadavg()
    engine = Engine.from_settings(Settings.from_env())
    if engine.bank is None:
        raise SystemExit("the benchmark needs the shipped probe pack (or HATCAT_PROBE_PACK)")
    config, dtype = engine.model.config, engine.loaded.dtype
    eager = make_step(engine)
    cuda = engine.loaded.device.type == "cuda"
    compiled = torch.compile(make_step(engine), dynamic=False, mode="reduce-overhead" if cuda else None)

    def static():
        return StaticCache(config=config, max_cache_len=16 + args.steps + 1)

    start = time.perf_counter()
    run(compiled, engine, static(), args.batch, 3)  # compiles (the prefill shape and the step shape)
    compile_s = time.perf_counter() - start
    per_step: dict[str, list[float]] = {"eager_dynamic": [], "compiled_static": []}
    for _ in range(args.repeats):
        per_step["eager_dynamic"].append(
            statistics.median(run(eager, engine, DynamicCache(), args.batch, args.steps)[1])
        )
        per_step["compiled_static"].append(
            statistics.median(run(compiled, engine, static(), args.batch, args.steps)[1])
        )
    eager_s, compiled_s = (statistics.median(v) for v in per_step.values())
    result = {
        "model": engine.loaded.name,
        "device": str(engine.loaded.device),
        "dtype": str(dtype).removeprefix("torch."),
        "batch": args.batch,
        "n_concepts": len(engine.bank),
        "eager_step_s": round(eager_s, 5),
        "compiled_step_s": round(compiled_s, 5),
        "compiled_speedup": round(eager_s / compiled_s, 3),
        "compile_s": round(compile_s, 1),
        "runs_step_s": {k: [round(x, 5) for x in v] for k, v in per_step.items()},
        "machine": machine(load_before),
        "measured_at": now(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
