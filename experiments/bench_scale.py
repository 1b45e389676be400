"""Scale-out on Ray -> results/bench_scale.json: 1 vs 2 model replicas under the same load, and
corpus texts/s in one process vs on Ray Data.

All in one run, on a local Ray cluster (`ray.init(num_cpus=4)`: logical CPUs, replicas take 0.5):

- `serve`: `hatcat.serve_ray` with 1, then 2 model replicas (no workbench); the same load on each:
  `--streams` concurrent streamed chat completions through the real `openai` client, `--tokens`
  tokens each, repeated `--rounds` times; aggregate completion tokens / wall time, p50 time to first
  token, and each replica process's RSS. `speedup_2_replicas` = aggregate(2) / aggregate(1).
- `corpus`: `--texts` short texts scored by `Engine.analyze` in this process (the model loaded
  first; the scoring timed alone) vs `python -m hatcat.corpus`'s `analyze_corpus` on Ray Data with
  1 and 2 actors (timed end to end: actors load the model, then score, then Parquet is written).

Honest about the machine: on a 2-core CPU box two replicas share the same two cores (and torch
already uses both in one process), so no speed-up is expected there; what the numbers show is the
overhead Ray adds. On a cluster each replica or actor brings its own GPU or node.

    python -m experiments.bench_scale [--streams 8] [--tokens 32] [--rounds 2] [--texts 1000] [--out results/bench_scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from hatcat.config import Settings
from hatcat.paths import RESULTS, ROOT
from tests.support import free_port

OUT = RESULTS / "bench_scale.json"
QUESTIONS = [
    "Write a short story about a lighthouse keeper.",
    "Tell me about your dog.",
    "Explain how a bicycle works.",
    "Write a poem about the sea.",
    "Why is the sky blue?",
    "Describe a quiet morning in a village.",
    "What should I cook tonight?",
    "Give me advice for my first job interview.",
]
SUBJECTS = ["my dog", "the violin", "a thunderstorm", "the tax office", "her old car", "a lie he told", "the war"]
MOODS = ["I was afraid of", "We laughed about", "Nobody trusted", "She sang about", "They argued over"]


def corpus(n: int) -> list[str]:
    return [
        f"{MOODS[i % 5]} {SUBJECTS[i % 7]} on day {i}, and nobody in the house said a word about it." for i in range(n)
    ]


def replica_rss_mb() -> list[float]:
    import psutil

    rss = []
    for proc in psutil.process_iter(["cmdline", "memory_info"]):
        if any("ServeReplica:hatcat:Model" in part for part in proc.info["cmdline"] or ()):
            rss.append(round(proc.info["memory_info"].rss / 2**20))
    return sorted(rss)


def load(base: str, streams: int, tokens: int, rounds: int) -> dict[str, float]:
    """`streams` concurrent streams of `tokens` tokens, `rounds` times: aggregate tok/s, p50 first token."""
    import openai

    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=600)

    def one(i: int) -> tuple[int, float]:
        start, first, n = time.perf_counter(), None, 0
        for chunk in client.chat.completions.create(
            model="hatcat-divergence",
            messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            max_tokens=tokens,
            seed=i,
            stream=True,
            stream_options={"include_usage": True},
        ):
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - start
            if chunk.usage is not None:
                n = chunk.usage.completion_tokens
        return n, first or 0.0

    one(0)  # warm: the first request on a replica measures the steering-norm prompt etc.
    rates, firsts = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        with ThreadPoolExecutor(streams) as pool:
            answers = list(pool.map(one, range(streams)))
        rates.append(sum(n for n, _ in answers) / (time.perf_counter() - start))
        firsts += [f for _, f in answers]
    return {
        "aggregate_tok_s": round(statistics.median(rates), 2),
        "p50_first_token_s": round(statistics.median(firsts), 3),
    }


def bench_serve(settings: Settings, args: argparse.Namespace) -> dict[str, object]:
    import httpx
    from ray import serve

    from hatcat.serve_ray import Scale, deploy

    out: dict[str, object] = {}
    for replicas in (1, 2):
        start = time.perf_counter()
        deploy(settings, Scale(replicas=replicas, workbench=False))
        base = f"http://{settings.host}:{settings.port}"
        ready = time.perf_counter() - start
        assert httpx.get(f"{base}/health", timeout=60).status_code == 200
        out[f"replicas_{replicas}"] = {
            "ready_s": round(ready, 1),
            **load(base, args.streams, args.tokens, args.rounds),
            "replica_rss_mb": replica_rss_mb(),
        }
        serve.delete("hatcat")
    out["speedup_2_replicas"] = round(out["replicas_2"]["aggregate_tok_s"] / out["replicas_1"]["aggregate_tok_s"], 3)
    serve.shutdown()
    return out


def bench_corpus(settings: Settings, args: argparse.Namespace) -> dict[str, object]:
    from hatcat.corpus import Actors, analyze_corpus
    from hatcat.engine import Engine

    texts = corpus(args.texts)
    ids = list(range(len(texts)))
    out: dict[str, object] = {"texts": len(texts)}
    for actors in (1, 2):
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            analyze_corpus(texts, ids, Path(folder) / "scores.parquet", settings, Actors(size=actors), top_k=10)
            wall = time.perf_counter() - start
        out[f"ray_data_{actors}_actor{'s' if actors > 1 else ''}"] = {
            "wall_s": round(wall, 1),
            "texts_per_s": round(len(texts) / wall, 2),
        }
    start = time.perf_counter()
    engine = Engine.from_settings(replace(settings, db="sqlite://"))
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    n = sum(1 for _ in engine.analyze(texts, None, 10))
    scoring = time.perf_counter() - start
    out["single_process"] = {
        "load_s": round(loaded, 1),
        "scoring_s": round(scoring, 1),
        "texts_per_s": round(n / scoring, 2),
        "texts_per_s_with_load": round(n / (scoring + loaded), 2),
    }
    for key in ("ray_data_1_actor", "ray_data_2_actors"):
        out[key]["vs_single_process_with_load"] = round(
            out[key]["texts_per_s"] / out["single_process"]["texts_per_s_with_load"], 3
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    settings = replace(
        Settings.from_env(),
        host="127.0.0.1",
        port=free_port(),
        db=str(Path(tempfile.mkdtemp()) / "hatcat.db"),
    )
    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    result: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_start": os.getloadavg()},
        "settings": vars(args) | {"out": os.path.relpath(args.out, ROOT)},
    }
    result["serve"] = bench_serve(settings, args)
    result["corpus"] = bench_corpus(settings, args)
    ray.shutdown()
    result["machine"]["load_avg_end"] = os.getloadavg()
    result["note"] = (
        f"{os.cpu_count()} CPU cores shared with other jobs: two replicas (or actors) share the same cores that one "
        "process already uses fully, so ratios near or below 1 measure Ray's overhead, not the scale-out; "
        "each replica or actor brings its own GPU or node on a cluster."
    )
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
