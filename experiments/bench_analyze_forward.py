"""Analysis with behaviour read-outs: ONE forward per batch against the former two, in one run
-> results/bench_analyze_forward.json.

1. `one_forward`: `Engine.analyze` as served (the shipped pack and its read-outs): one forward per
   batch to the final norm, hooked at the bank's and the read-outs' blocks, the output layer only at
   the positions the read-outs read (it still runs the output layer over the whole vocabulary at every
   token after the first: a read-out needs each token's log-probability and entropy);
2. `two_forwards`: the former path: the concept analysis (its forward stops at the bank's block),
   then a second forward of the same batch through the whole model for the read-outs;
3. `concepts_only`: the concept analysis alone (no read-outs), for the read-outs' own cost.

Texts: the behaviour benchmark's prompts + the model's outputs (few-shot, ~100-200 tokens) and its
ordinary generated text. The three ways alternate for `--repeats` rounds; the ratios are taken
within each round (the machine is shared: neighbours' load moves from round to round) and their
median is reported, with each way's fastest run; the largest difference between the two paths'
behaviour scores is recorded.

    python -m experiments.bench_analyze_forward [--texts 96] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from contextlib import ExitStack

import torch

from experiments.behaviour import DATA
from experiments.behaviour_states import with_prompts
from experiments.machine import machine, now
from hatcat.analysis import analyses
from hatcat.config import Settings
from hatcat.engine import Engine
from hatcat.monitor import Monitor
from hatcat.paths import RESULTS
from hatcat.pipeline import ANALYZE_BATCH, ANALYZE_BATCH_TOKENS, _length_batches
from hatcat.tap import tap

OUT = RESULTS / "bench_analyze_forward.json"


def texts_for(n: int) -> list[str]:
    """`n` texts: every other one a prompt + the model's answer, the rest its ordinary generated text."""
    rows = with_prompts(DATA / "outputs_honest.jsonl")
    answers = [r["prompt"] + r["output"] for r in rows if r["task"] == "hallucination"][: n - n // 2]
    ordinary = [r["prompt"] + r["output"] for r in rows if r["task"] == "ordinary"]
    return answers + ordinary[: n // 2]


@torch.inference_mode()
def second_forward(engine: Engine, texts: list[str]) -> list[dict]:
    """The former read-out pass: the texts again, through the whole model, in the analysis' batches."""
    readouts, tok = engine.monitor.readouts, engine.tokenizer
    encoded = [tok(t).input_ids for t in texts]
    found: list[dict] = [{}] * len(texts)
    for batch in _length_batches([len(e) for e in encoded], ANALYZE_BATCH, ANALYZE_BATCH_TOKENS):
        lengths = [len(encoded[i]) for i in batch]
        ids = torch.full((len(batch), max(lengths)), tok.pad_token_id, dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, : lengths[row]] = torch.tensor(encoded[i])
        mask = (torch.arange(ids.shape[1])[None, :] < torch.tensor(lengths)[:, None]).long()
        with ExitStack() as stack:
            taps = {b: stack.enter_context(tap(engine.model, b)) for b in set(readouts.blocks)}
            last = engine.model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        hidden = {b: t.hidden for b, t in taps.items()}
        for i, behaviours in zip(
            batch, readouts.read_texts(engine.model.get_output_embeddings(), last, hidden, ids, lengths)
        ):
            found[i] = behaviours
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    load_before = os.getloadavg()
    engine = Engine.from_settings(Settings.from_env())
    monitor = engine.monitor
    assert monitor.readouts is not None, "the loaded probe pack has no read-outs"
    concepts_only = Monitor(
        monitor.bank, engine.packs.concepts, engine.settings.base_layers, engine.settings.keep_top_k
    )
    texts = texts_for(args.texts)
    tokens = sum(len(engine.tokenizer(t).input_ids) for t in texts)
    found: dict[str, list] = {}

    def one() -> None:
        found["one"] = [d["summary"]["behaviours"] for _, d in sorted(engine.analyze(texts), key=lambda x: x[0])]

    def two() -> None:
        list(analyses(engine.model, engine.tokenizer, concepts_only, texts))
        found["two"] = second_forward(engine, texts)

    def concepts() -> None:
        list(analyses(engine.model, engine.tokenizer, concepts_only, texts))

    ways = {"one_forward": one, "two_forwards": two, "concepts_only": concepts}
    one()  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, fn in ways.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    fastest = {name: min(s) for name, s in seconds.items()}

    def ratio(a: str, b: str) -> float:
        return round(statistics.median(x / y for x, y in zip(seconds[a], seconds[b])), 3)

    gap = max(
        abs(a[n]["score"] - b[n]["score"]) for a, b in zip(found["one"], found["two"]) for n in monitor.readouts.names
    )
    report = {
        "measured_at": now(),
        "machine": machine(load_before),
        "command": f"python -m experiments.bench_analyze_forward --texts {args.texts} --repeats {args.repeats}",
        "pack": engine.probes.id,
        "readouts": {n: b for n, b in zip(monitor.readouts.names, monitor.readouts.blocks)},
        "bank_block": monitor.bank.tap_layer,
        "texts": len(texts),
        "tokens": tokens,
        "seconds": {name: [round(x, 3) for x in s] for name, s in seconds.items()},
        "fastest_s": {name: round(x, 3) for name, x in fastest.items()},
        "tokens_per_s_fastest": {name: round(tokens / x, 1) for name, x in fastest.items()},
        "two_forwards_over_one_forward": ratio("two_forwards", "one_forward"),
        "one_forward_over_concepts_only": ratio("one_forward", "concepts_only"),
        "max_behaviour_score_difference": round(gap, 5),
    }
    OUT.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
