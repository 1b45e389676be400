"""Corpus jobs on Ray Data: the same code on one machine or a cluster.

    python -m hatcat.corpus analyze --input transcripts.jsonl --output scores.parquet [--address auto]
    python -m hatcat.corpus extract --input prompts.jsonl --output states.parquet --layer 6 [--address auto]
    python -m hatcat.corpus evidence [--max-windows N] [--actors 2 [--address auto]]

`--input` is JSONL as for `python -m hatcat.analyze` (a JSON string or `{"text": ..., "id": ...}` per
line; it is read and checked on the driver). The texts flow through `ray.data.from_items ->
map_batches(actor) -> write_parquet`, rows in input order; `--output` is a Parquet dataset (a folder
of files, one per block: `pyarrow.parquet.read_table(path)` reads them as one table).

- `analyze`: each `Scorer` actor holds one Engine (model + probe pack) and scores its batches with
  `Engine.analyze`, the path `/v1/analyze` takes, so a text's per-concept scores and divergence are
  those `/v1/analyze` answers; the columns are those of `python -m hatcat.analyze`.
- `extract`: activations for probe training. Each `Extractor` actor holds the model alone and
  writes each text's `last` and `mean` pooled state of decoder block `--layer` (the pooled
  features `hatcat.training` fits on); the fit stays on the driver (`read_states` -> a matrix).

- `evidence`: scans the reference corpus (hatcat/evidence/reference.py) with the probe pack, resumably,
  then writes the pack's concept dashboards and calibration (hatcat/evidence/job.py); single process
  unless `--actors` is above 1 or `--address` is given (Ray Data's actors are not needed: each Ray actor
  scans a slice of the windows and the driver merges their states).

Without `--address` Ray starts in local mode on this machine (the dashboard off); `--address auto`
(or `ray://head:10001`) joins an existing cluster, where each actor may take a GPU
(`--gpus-per-actor 1`). Bad input is exit status 2 with one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

from hatcat.analyze import parquet_row, read_jsonl
from hatcat.config import SCALE_EXTRA, Settings, require_package
from hatcat.errors import HatCatError, InvalidValue
from hatcat.paths import SHIPPED_PROBES
from hatcat.pipeline import ANALYZE_BATCH

BATCHES_PER_BLOCK = 4  # texts handed to an actor at once, in padded batches: room to group similar lengths


@dataclasses.dataclass(frozen=True)
class Actors:
    """The actor pool of a job: how many, what each reserves, texts per padded forward."""

    size: int = 1
    cpus: float = 0.5
    gpus: float = 0
    batch_size: int = ANALYZE_BATCH

    @property
    def threads(self) -> int:
        """torch threads per actor: its share of the CPUs, at least one."""
        return max(1, math.ceil(self.cpus))


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

        ids, texts = [str(i) for i in batch["id"]], [str(t) for t in batch["text"]]
        rows: list[dict[str, Any] | None] = [None] * len(texts)
        names = [
            f"text {identifier}" for identifier in ids
        ]  # a refusal names the corpus row, not its place in the batch
        for i, document in self.engine.analyze(texts, self.concepts, self.top_k, self.batch_size, names):
            rows[i] = parquet_row(ids[i], texts[i], document)
        return pa.Table.from_pylist(rows)


class Extractor:
    """A Ray Data actor: the model alone (no probe pack), pooled states of one decoder block per text."""

    def __init__(self, settings: Settings, layer: int, batch_size: int, threads: int):
        import torch

        from hatcat.model import load_model

        torch.set_num_threads(threads)
        self.loaded = load_model(
            settings.model_name, settings.device, settings.dtype, settings.cache_dir, settings.hf_offline
        )
        layers = len(self.loaded.layers)
        if not 0 <= layer < layers:
            raise InvalidValue(
                f"--layer {layer} is out of range: the model has {layers} decoder layers (0..{layers - 1})"
            )
        self.layer, self.batch_size = layer, batch_size

    def __call__(self, batch: dict[str, Any]) -> Any:
        import pyarrow as pa

        from hatcat.training.activations import POOLINGS, pooled_activations

        ids, texts = [str(i) for i in batch["id"]], [str(t) for t in batch["text"]]
        loaded = self.loaded
        pooled = pooled_activations(loaded.model, loaded.tokenizer, texts, [self.layer], self.batch_size)[self.layer]
        vectors = {p: pa.array(list(pooled[p].float().numpy()), type=pa.list_(pa.float32())) for p in POOLINGS}
        return pa.table({"id": ids, "text": texts, "layer": [self.layer] * len(texts), **vectors})


def _run(texts: list[str], ids: list[Any], output: Path, actor: type, kwargs: dict[str, Any], pool: Actors) -> None:
    """`from_items -> map_batches(actor pool) -> write_parquet` on the running Ray cluster, in input order."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    DataContext.get_current().execution_options.preserve_order = True
    rows = ray.data.from_items([{"id": str(i), "text": t} for i, t in zip(ids, texts)])
    done = rows.map_batches(
        actor,
        fn_constructor_kwargs={**kwargs, "batch_size": pool.batch_size, "threads": pool.threads},
        compute=ActorPoolStrategy(size=pool.size),
        batch_size=pool.batch_size * BATCHES_PER_BLOCK,
        num_cpus=pool.cpus,
        num_gpus=pool.gpus,
    )
    done.write_parquet(str(output))


def analyze_corpus(
    texts: list[str],
    ids: list[Any],
    output: Path,
    settings: Settings,
    pool: Actors = Actors(),
    concepts: list[str] | None = None,
    top_k: int = 10,
) -> None:
    """Score `texts` (keyed by `ids`) into the Parquet dataset `output` (`ray.init` first)."""
    _run(texts, ids, output, Scorer, {"settings": settings, "concepts": concepts, "top_k": top_k}, pool)


def extract_corpus(
    texts: list[str], ids: list[Any], output: Path, settings: Settings, layer: int, pool: Actors = Actors()
) -> None:
    """Pooled block-`layer` states of `texts` into the Parquet dataset `output` (`ray.init` first)."""
    _run(texts, ids, output, Extractor, {"settings": settings, "layer": layer}, pool)


def read_states(path: Path, pooling: str = "last") -> tuple[list[str], Any]:
    """(ids, [texts, hidden] float32 matrix) from an `extract` output: the driver's side of a fit."""
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["id", pooling])
    return table.column("id").to_pylist(), np.stack(table.column(pooling).to_numpy(zero_copy_only=False))


def _cause(err: BaseException) -> HatCatError | None:
    """The HatCatError an actor raised, through Ray's wrappers (`cause`, `__cause__`, `__context__`)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, HatCatError):
            return err
        seen.add(id(err))
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
    return None


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--input", type=Path, required=True, help="JSONL: a JSON string or {'text': ..., 'id': ...}")
    common.add_argument("--output", type=Path, required=True, help="Parquet dataset (folder) to write")
    common.add_argument("--address", default=None, help="Ray cluster to join (auto, ray://head:10001); unset: local")
    common.add_argument("--batch-size", type=int, default=ANALYZE_BATCH, help="texts per padded forward")
    common.add_argument("--actors", type=int, default=1, help="actors (each loads the model once)")
    common.add_argument("--cpus-per-actor", type=float, default=0.5, help="CPUs Ray reserves per actor")
    common.add_argument("--gpus-per-actor", type=float, default=0, help="GPUs per actor (1 on GPU workers)")
    parser = argparse.ArgumentParser(prog="python -m hatcat.corpus", description=__doc__.split("\n\n")[0])
    jobs = parser.add_subparsers(dest="job", required=True)
    job = jobs.add_parser("analyze", parents=[common], help="per-text concept scores and divergence (/v1/analyze's)")
    job.add_argument("--top-k", type=int, default=10, help="concepts summarised per text (by max divergence)")
    job.add_argument("--concepts", default="", help="comma-separated concepts to summarise instead of the top k")
    job = jobs.add_parser("extract", parents=[common], help="pooled states of one decoder block, for probe training")
    job.add_argument("--layer", type=int, required=True, help="decoder block whose output is pooled (0-based)")
    job = jobs.add_parser("evidence", help="scan the reference corpus; write the pack's dashboards and calibration")
    job.add_argument(
        "--pack", type=Path, default=None, help="probe pack folder (default: HATCAT_PROBE_PACK or shipped)"
    )
    job.add_argument(
        "--max-windows", type=int, default=None, help="scan at most this many more windows (0: write only)"
    )
    job.add_argument("--threads", type=int, default=2, help="torch threads (per actor with --address)")
    job.add_argument("--address", default=None, help="Ray cluster to join (auto, ray://head:10001)")
    job.add_argument("--actors", type=int, default=1, help="Ray actors (above 1: Ray, local unless --address)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.job == "evidence":
        return _evidence(args)
    try:
        pool = Actors(args.actors, args.cpus_per_actor, args.gpus_per_actor, args.batch_size)
        if pool.size < 1 or pool.batch_size < 1 or pool.cpus <= 0 or pool.gpus < 0:
            raise InvalidValue("--actors and --batch-size must be >= 1, --cpus-per-actor > 0, --gpus-per-actor >= 0")
        if args.job == "analyze" and args.top_k < 1:
            raise InvalidValue("--top-k must be >= 1")
        settings = Settings.from_env()
        texts, ids = read_jsonl(args.input)  # bad input is refused before a cluster starts
        if args.output.exists() and (not args.output.is_dir() or any(args.output.iterdir())):
            raise InvalidValue(f"{args.output} already exists; remove it or choose another --output")
        require_package("ray", "python -m hatcat.corpus", SCALE_EXTRA)
        import ray

        ray.init(address=args.address, include_dashboard=False, logging_level="WARNING")
        try:
            if args.job == "analyze":
                concepts = [c.strip() for c in args.concepts.split(",") if c.strip()] or None
                analyze_corpus(texts, ids, args.output, settings, pool, concepts, args.top_k)
            else:
                extract_corpus(texts, ids, args.output, settings, args.layer, pool)
        except Exception as err:
            cause = _cause(err)
            if cause is None:
                raise
            raise cause from None
    except HatCatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(texts)} {'analyses' if args.job == 'analyze' else 'states'} to {args.output}", file=sys.stderr)
    return 0


def _evidence(args: argparse.Namespace) -> int:
    from hatcat.evidence.job import run, write_evidence

    settings = Settings.from_env()
    folder = args.pack or (Path(settings.probe_pack) if settings.probe_pack else SHIPPED_PROBES)
    if not (folder / "manifest.json").is_file() or args.threads < 1 or args.actors < 1:
        print(f"error: {folder} is not a probe pack, or --threads/--actors < 1", file=sys.stderr)
        return 2
    if args.max_windows != 0:
        run(settings, folder, args.max_windows, args.threads, args.address, args.actors)
    info = write_evidence(settings, folder, args.threads)
    print(json.dumps({k: info[k] for k in ("scanned", "expected_firings_per_token")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
