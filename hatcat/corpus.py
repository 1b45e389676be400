"""Corpus jobs on Ray Data: score a corpus of texts with the same code on one machine or a cluster.

    python -m hatcat.corpus analyze --input transcripts.jsonl --output scores.parquet [--address auto]

`--input` is JSONL as for `python -m hatcat.analyze` (a JSON string or `{"text": ..., "id": ...}` per
line; it is read and checked on the driver). The texts flow through `ray.data.from_items ->
map_batches(Scorer) -> write_parquet`: each `Scorer` actor holds one Engine (model + probe pack)
and scores its batches with `Engine.analyze`, the path `/v1/analyze` takes, so a text's per-concept
scores and divergence are those `/v1/analyze` answers. Rows keep the input order and have the
columns of `python -m hatcat.analyze`; `--output` is a Parquet dataset (a folder of files, one per
block: `pyarrow.parquet.read_table(path)` reads them as one table).

Without `--address` Ray starts in local mode on this machine (the dashboard off); `--address auto`
(or `ray://head:10001`) joins an existing cluster, where each actor may take a GPU
(`--gpus-per-actor 1`). Bad input is exit status 2 with one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

from hatcat.analyze import parquet_row, read_jsonl
from hatcat.config import Settings
from hatcat.errors import HatCatError, InvalidValue
from hatcat.pipeline import ANALYZE_BATCH

BATCHES_PER_BLOCK = 4  # texts handed to an actor at once, in padded batches: room to group similar lengths


class Scorer:
    """A Ray Data actor: one Engine, loaded once, scoring batches of `{"id", "text"}` rows."""

    def __init__(self, settings: Settings, concepts: list[str] | None, top_k: int, batch_size: int, threads: int):
        import torch

        from hatcat.engine import Engine

        torch.set_num_threads(threads)
        # the job records nothing: an in-memory record store, not a file shared by every actor
        self.engine = Engine.from_settings(dataclasses.replace(settings, db="sqlite://"))
        self.engine.require_probes("corpus analysis")  # Conflict (exit 2) without a probe pack
        self.concepts, self.top_k, self.batch_size = concepts, top_k, batch_size

    def __call__(self, batch: dict[str, Any]) -> Any:
        import pyarrow as pa

        from hatcat.analysis import check_request

        ids, texts = [str(i) for i in batch["id"]], [str(t) for t in batch["text"]]
        engine = self.engine
        for identifier, text in zip(ids, texts):
            try:
                check_request(engine.model, engine.tokenizer, engine.monitor, [text], self.concepts)
            except HatCatError as err:
                raise type(err)(f"text {identifier}: {err}") from None
        rows: list[dict[str, Any] | None] = [None] * len(texts)
        for i, document in engine.analyze(texts, self.concepts, self.top_k, self.batch_size):
            rows[i] = parquet_row(ids[i], texts[i], document)
        return pa.Table.from_pylist(rows)


def analyze_corpus(
    texts: list[str],
    ids: list[Any],
    output: Path,
    settings: Settings,
    *,
    concepts: list[str] | None = None,
    top_k: int = 10,
    batch_size: int = ANALYZE_BATCH,
    actors: int = 1,
    cpus_per_actor: float = 0.5,
    gpus_per_actor: float = 0,
) -> None:
    """Score `texts` (keyed by `ids`) into the Parquet dataset `output` on the running Ray cluster
    (`ray.init` first), in input order."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    DataContext.get_current().execution_options.preserve_order = True
    rows = ray.data.from_items([{"id": str(i), "text": t} for i, t in zip(ids, texts)])
    scored = rows.map_batches(
        Scorer,
        fn_constructor_kwargs={
            "settings": settings,
            "concepts": concepts,
            "top_k": top_k,
            "batch_size": batch_size,
            "threads": max(1, math.ceil(cpus_per_actor)),
        },
        compute=ActorPoolStrategy(size=actors),
        batch_size=batch_size * BATCHES_PER_BLOCK,
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor,
    )
    scored.write_parquet(str(output))


def _cause(err: BaseException) -> HatCatError | None:
    """The HatCatError an actor raised, through Ray's wrappers (`cause`, `__cause__`, `__context__`)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, HatCatError):
            return err
        seen.add(id(err))
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hatcat.corpus", description=__doc__.split("\n\n")[0])
    jobs = parser.add_subparsers(dest="job", required=True)
    job = jobs.add_parser("analyze", help="per-text concept scores and divergence, as /v1/analyze answers them")
    job.add_argument("--input", type=Path, required=True, help="JSONL: a JSON string or {'text': ..., 'id': ...}")
    job.add_argument("--output", type=Path, required=True, help="Parquet dataset (folder) to write")
    job.add_argument("--address", default=None, help="Ray cluster to join (auto, ray://head:10001); unset: local")
    job.add_argument("--top-k", type=int, default=10, help="concepts summarised per text (by max divergence)")
    job.add_argument("--concepts", default="", help="comma-separated concepts to summarise instead of the top k")
    job.add_argument("--batch-size", type=int, default=ANALYZE_BATCH, help="texts per padded forward")
    job.add_argument("--actors", type=int, default=1, help="scoring actors (each loads the model once)")
    job.add_argument("--cpus-per-actor", type=float, default=0.5, help="CPUs Ray reserves per actor")
    job.add_argument("--gpus-per-actor", type=float, default=0, help="GPUs per actor (1 on GPU workers)")
    args = parser.parse_args(argv)
    try:
        if args.top_k < 1 or args.batch_size < 1 or args.actors < 1 or args.cpus_per_actor <= 0:
            raise InvalidValue("--top-k, --batch-size and --actors must be >= 1, --cpus-per-actor > 0")
        if args.gpus_per_actor < 0:
            raise InvalidValue("--gpus-per-actor must be >= 0")
        settings = Settings.from_env()
        texts, ids = read_jsonl(args.input)  # bad input is refused before a cluster starts
        if args.output.exists() and (not args.output.is_dir() or any(args.output.iterdir())):
            raise InvalidValue(f"{args.output} already exists; remove it or choose another --output")
        import ray

        ray.init(address=args.address, include_dashboard=False, logging_level="WARNING")
        concepts = [c.strip() for c in args.concepts.split(",") if c.strip()] or None
        try:
            analyze_corpus(
                texts,
                ids,
                args.output,
                settings,
                concepts=concepts,
                top_k=args.top_k,
                batch_size=args.batch_size,
                actors=args.actors,
                cpus_per_actor=args.cpus_per_actor,
                gpus_per_actor=args.gpus_per_actor,
            )
        except Exception as err:
            cause = _cause(err)
            if cause is None:
                raise
            raise cause from None
    except HatCatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(texts)} analyses to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
