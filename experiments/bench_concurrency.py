"""Many users at once -> results/bench_concurrency.json: continuous batching and batched analysis.

All in one run, on the engine as served (default dtype, the shipped probe pack: every one of
the 5,596 concepts scored on every token, activation and words-only side, hierarchy policy):

- `plain_tok_s`: transformers' `generate`, one greedy stream, no monitoring (the baseline);
- `single_tok_s`: one monitored stream through the engine's batch scheduler;
- `aggregate_tok_s_8`: eight monitored streams submitted at once (different prompts and seeds,
  seeded sampling), all tokens / wall time; `speedup_8` = aggregate / single; `p50_first_token_s_8`.
  Every stream writes exactly `--tokens` tokens (`min_tokens`, as `plain` uses `min_new_tokens`
  and vLLM's serving benchmark `ignore_eos`), so a stream that draws end-of-sequence early does
  not make a round cheaper by chance;
- `lm_head_ms`: the output projection alone for 1 and 8 rows: `F.linear`, `hatcat.linear`
  (vocabulary-major) and `head` (the model's output layer as it runs, packed for several rows);
- `analyze_texts_per_s_single` (64 short texts, one request each) vs `_batched` (one call, padded
  batches), `analyze_speedup`;
- `identical_greedy`: a greedy request's tokens alone == inside a full batch of eight
  different-length prompts (and == a `Scheduler(max_batch=1)`, the reference); the worst
  per-token activation difference of its records is reported too; `greedy_alone_vs_batch_of_8`:
  all eight prompts greedy alone vs together, in the run's dtype and (on a copy) in the other of
  fp32/bf16, with the solo run's logit margin wherever a row differs.

Ways are interleaved over `--repeats` rounds and the median is reported; the load average is
recorded, because on a shared machine absolute rates move with the neighbours (ratios within
one run hold better).

    python -m experiments.bench_concurrency [--tokens 48] [--repeats 2] [--out results/bench_concurrency.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

from experiments.machine import machine, now
from hatcat.api.prompt import build_prompt
from hatcat.batching import Scheduler
from hatcat.config import Settings
from hatcat.engine import Engine
from hatcat.generation import GenerationSettings, MonitoredFinish, MonitoredToken, encode_prompt
from hatcat.linear import linear
from hatcat.paths import RESULTS

OUT = RESULTS / "bench_concurrency.json"
QUESTIONS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Tell me about your dog.",
    "Explain how a bicycle works.",
    "Write a poem about the sea and the sailors who cross it at night, with storms and stars.",
    "Why is the sky blue?",
    "Describe a quiet morning in a small village in the mountains, the bakery, the church bells.",
    "What should I cook tonight?",
    "Give me advice for my first job interview.",
]
SHORT_TEXTS = [
    "She was terrified of the dark road ahead.",
    "The committee approved the budget.",
    "He lied about the money.",
    "Music filled the hall.",
    "The river flooded the town after the storm.",
    "I promise I will pay you back tomorrow.",
    "The cat slept on the warm windowsill.",
    "Our team won the championship last night.",
]


def prompts(engine: Engine) -> list[str]:
    return [build_prompt(engine.tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]


@torch.inference_mode()
def plain(engine: Engine, prompt: str, tokens: int) -> float:
    inputs = engine.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(engine.loaded.device)
    with engine.exclusive():
        start = time.perf_counter()
        out = engine.model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        seconds = time.perf_counter() - start
    return (out.shape[1] - inputs.input_ids.shape[1]) / seconds


def concurrent(engine: Engine, texts: list[str], tokens: int) -> tuple[float, list[float]]:
    """Submit every prompt at once (seeded sampling, so none stops early by chance alike);
    (generated tokens / wall seconds, seconds to each stream's first token)."""
    start = time.perf_counter()
    generations = [
        engine.generate(t, GenerationSettings(max_tokens=tokens, min_tokens=tokens, temperature=0.8, seed=i))
        for i, t in enumerate(texts)
    ]
    first: list[float] = [0.0] * len(texts)
    counts = [0] * len(texts)

    def read(i: int) -> None:
        for event in generations[i]:
            if isinstance(event, MonitoredToken):
                counts[i] += 1
                if counts[i] == 1:
                    first[i] = time.perf_counter() - start

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - start), first


@torch.inference_mode()
def lm_head_ms(engine: Engine, repeats: int = 5) -> dict[str, float]:
    """Milliseconds (median) of the output projection alone for 1 and 8 rows: `F.linear`, the
    vocabulary-major `hatcat.linear`, and the model's output layer as it runs (`head`: a packed copy
    for several rows where `hatcat.linear.FewRowsHead` applies)."""
    head = engine.model.get_output_embeddings()
    out = {}
    for rows in (1, 8):
        x = torch.randn(rows, head.weight.shape[1], dtype=head.weight.dtype, device=head.weight.device)
        for name, fn in (("F.linear", F.linear), ("hatcat.linear", linear), ("head", lambda x, _w, _b: head(x))):
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn(x, head.weight, head.bias).sum().item()  # .item(): wait for the device
                times.append(time.perf_counter() - start)
            out[f"{name}_{rows}"] = round(1000 * statistics.median(times), 2)
    return out


def drain(generations: list) -> list[list]:
    """Read every generation to its end, concurrently (each in its own thread, as a client would)."""
    with ThreadPoolExecutor(len(generations)) as pool:
        return list(pool.map(list, generations))


def analyze_rate(engine: Engine, texts: list[str], batched: bool) -> float:
    start = time.perf_counter()
    if batched:
        done = len(dict(engine.analyze(texts)))
    else:
        done = sum(len(dict(engine.analyze([t]))) for t in texts)
    return done / (time.perf_counter() - start)


def greedy_identity(engine: Engine, texts: list[str], tokens: int) -> dict[str, object]:
    """The first prompt greedy, alone and as one row of a full batch of all eight (the others sampled)."""
    greedy = GenerationSettings(max_tokens=tokens, temperature=0)
    reference = Scheduler(engine.model, engine.tokenizer, engine.exclusive, max_batch=1)
    unbatched = list(reference.submit(texts[0], greedy, (), engine.monitor, engine.vectors))
    alone = list(engine.generate(texts[0], greedy))
    generations = [engine.generate(texts[0], greedy)] + [
        engine.generate(t, GenerationSettings(max_tokens=tokens - 2 * i, temperature=0.8, seed=i))
        for i, t in enumerate(texts[1:], 1)
    ]
    results = drain(generations)

    def ids(events: list) -> list[int]:
        return [e.step.token_id for e in events if isinstance(e, MonitoredToken)]

    worst = 0.0
    for b, a in zip(
        [e.record for e in results[0] if isinstance(e, MonitoredToken)],
        [e.record for e in unbatched if isinstance(e, MonitoredToken)],
    ):
        same = {c.concept: c.activation for c in a.concepts}
        worst = max([worst] + [abs(c.activation - same[c.concept]) for c in b.concepts if c.concept in same])
    return {
        "identical_greedy": ids(results[0]) == ids(alone) == ids(unbatched),
        "greedy_tokens": len(ids(alone)),
        "record_max_abs_diff": round(worst, 6),
        "batch_finished": all(isinstance(r[-1], MonitoredFinish) for r in results),
    }


@torch.inference_mode()
def greedy_flips(engine: Engine, model: torch.nn.Module, texts: list[str], tokens: int) -> dict[str, object]:
    """Every prompt greedy alone vs all of them greedy in one batch, on `model` (tokens only). Where a
    row differs, the logit margin (top-1 minus top-2) of the solo run at the first differing position:
    a small margin means batched kernels' summation order flipped a near-tie."""
    scheduler = Scheduler(model, engine.tokenizer, engine.exclusive, max_batch=len(texts))
    greedy = GenerationSettings(max_tokens=tokens, temperature=0)

    def ids(events: list) -> list[int]:
        return [e.step.token_id for e in events if isinstance(e, MonitoredToken)]

    alone = [ids(list(scheduler.submit(t, greedy))) for t in texts]
    generations = [scheduler.submit(t, greedy) for t in texts]
    together = drain(generations)
    differences = []
    for text, solo, batched in zip(texts, alone, (ids(t) for t in together)):
        if solo == batched:
            continue
        at = next((i for i, (a, b) in enumerate(zip(solo, batched)) if a != b), min(len(solo), len(batched)))
        prompt_ids = encode_prompt(engine.tokenizer, text)
        sequence = torch.tensor([prompt_ids + solo[:at]], device=engine.loaded.device)
        top = model(input_ids=sequence, logits_to_keep=1).logits[0, -1].float().topk(2).values
        differences.append({"position": at, "solo_logit_margin": round(float(top[0] - top[1]), 4)})
    return {
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "prompts": len(texts),
        "identical": len(texts) - len(differences),
        "differences": differences,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=48, help="new tokens per stream")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--texts", type=int, default=64, help="short texts to analyse")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    load_before = os.getloadavg()
    engine = Engine.from_settings(Settings.from_env())
    if engine.monitor is None:
        raise SystemExit("the benchmark needs the shipped probe pack (or HATCAT_PROBE_PACK)")
    texts = prompts(engine)
    short = (SHORT_TEXTS * (args.texts // len(SHORT_TEXTS) + 1))[: args.texts]
    # warm-up, every way once at full length: first forwards allocate, the scheduler thread starts,
    # and a GPU meets each batch shape and cache length once (with 8-token warm-ups the H200's first
    # measured round still ran at half the rate of the second)
    plain(engine, texts[0], args.tokens)
    concurrent(engine, texts[:1], args.tokens)
    concurrent(engine, texts, args.tokens)
    analyze_rate(engine, short, batched=False)
    analyze_rate(engine, short, batched=True)
    runs: dict[str, list[float]] = {
        k: [] for k in ("plain", "single", "aggregate_8", "analyze_single", "analyze_batched")
    }
    firsts: list[float] = []
    for _ in range(args.repeats):
        runs["plain"].append(plain(engine, texts[0], args.tokens))
        runs["single"].append(concurrent(engine, texts[:1], args.tokens)[0])
        rate, first = concurrent(engine, texts, args.tokens)
        runs["aggregate_8"].append(rate)
        firsts.extend(first)
        runs["analyze_single"].append(analyze_rate(engine, short, batched=False))
        runs["analyze_batched"].append(analyze_rate(engine, short, batched=True))
    median = {k: statistics.median(v) for k, v in runs.items()}
    identity = greedy_identity(engine, texts, min(args.tokens, 32))
    flips = [greedy_flips(engine, engine.model, texts, min(args.tokens, 32))]
    other = torch.float32 if engine.loaded.dtype == torch.bfloat16 else torch.bfloat16  # the other dtype, on a copy
    flips.append(greedy_flips(engine, copy.deepcopy(engine.model).to(other), texts, min(args.tokens, 32)))
    result = {
        "model": engine.loaded.name,
        "device": str(engine.loaded.device),
        "dtype": str(engine.loaded.dtype).removeprefix("torch."),
        "dtype_choice": engine.loaded.dtype_choice,
        "n_concepts": len(engine.bank),
        "new_tokens": args.tokens,
        "repeats": args.repeats,
        "max_batch": engine.settings.max_batch,
        "plain_tok_s": round(median["plain"], 2),
        "single_tok_s": round(median["single"], 2),
        "single_over_plain": round(median["single"] / median["plain"], 3),
        "aggregate_tok_s_8": round(median["aggregate_8"], 2),
        "speedup_8": round(median["aggregate_8"] / median["single"], 2),
        "p50_first_token_s_8": round(statistics.median(firsts), 3),
        "analyze_texts": args.texts,
        "analyze_texts_per_s_single": round(median["analyze_single"], 2),
        "analyze_texts_per_s_batched": round(median["analyze_batched"], 2),
        "analyze_speedup": round(median["analyze_batched"] / median["analyze_single"], 2),
        "lm_head_ms": lm_head_ms(engine),
        **identity,
        "greedy_alone_vs_batch_of_8": flips,
        "runs": {k: [round(x, 3) for x in v] for k, v in runs.items()},
        "machine": machine(load_before),
        "measured_at": now(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
