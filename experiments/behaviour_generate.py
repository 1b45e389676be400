"""The embedded model answers the behaviour items through the project's own batched generation path.

    nice -n 10 python -m experiments.behaviour_generate data/behaviour/items_honest.jsonl data/behaviour/outputs_honest.jsonl

`Engine.generate` puts each request into the running batch (`hatcat.batching.Scheduler`); a chunk of
requests is submitted at once so they decode together. Greedy, stop at a newline; ordinary prompts
are continued (sampled, seeded) for 32 tokens. Resumable: items already in the output file are skipped.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from experiments.behaviour_data import matches, read_jsonl
from hatcat.concepts import load_pack
from hatcat.config import Settings
from hatcat.engine import Engine
from hatcat.generation import Finished, GenerationSettings
from hatcat.model import load_model

ANSWER = GenerationSettings(max_tokens=8, temperature=0.0, stop=("\n",))
CHUNK = 32


def settings_for(item: dict, k: int) -> GenerationSettings:
    if item["task"] == "ordinary":
        return GenerationSettings(max_tokens=32, temperature=0.8, top_p=0.95, seed=k, stop=("\n",))
    return ANSWER


def graded(item: dict, output: str) -> dict:
    out = {key: v for key, v in item.items() if key != "prompt"}
    out["output"] = output
    if "answers" in item:
        out["correct" if item["task"] != "withholding" else "revealed"] = matches(output, item["answers"])
    return out


def plain_engine() -> Engine:
    """The real engine without a probe pack: plain batched generation (states are read later)."""
    settings = Settings.from_env()
    loaded = load_model(settings.model_name, device=settings.device, dtype=settings.dtype, cache_dir=settings.cache_dir)
    return Engine(settings, loaded, load_pack())


def main(src: str, dst: str, limit: int | None = None) -> None:
    items = read_jsonl(Path(src))
    done = {r["id"] for r in read_jsonl(Path(dst))}
    todo = [(k, it) for k, it in enumerate(items) if it["id"] not in done][:limit]
    engine = plain_engine()
    start, n = time.perf_counter(), 0
    with Path(dst).open("a") as out:
        for c in range(0, len(todo), CHUNK):
            chunk = todo[c : c + CHUNK]
            runs = [engine.generate(it["prompt"], settings_for(it, k)) for k, it in chunk]
            for (_, it), run in zip(chunk, runs, strict=True):
                text = next(e.finished.text for e in run if isinstance(getattr(e, "finished", None), Finished))
                out.write(json.dumps(graded(it, text), ensure_ascii=False) + "\n")
            out.flush()
            n += len(chunk)
            print(f"{n}/{len(todo)} items, {n / (time.perf_counter() - start):.2f} items/s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
