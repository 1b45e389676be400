"""The evidence job: scan the reference corpus with a probe pack, then write the pack's dashboards.

    python -m hatcat.corpus evidence [--pack FOLDER] [--max-windows N] [--threads N] [--actors 2 [--address auto]]

Single process by default (resumable: run it again to continue); with `--actors` above 1 or an
`--address`, the windows not yet scanned are split over Ray actors (on this machine unless `--address`
names a cluster) whose partial states are merged on the driver.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

from hatcat.config import Settings
from hatcat.evidence.reference import read_corpus
from hatcat.evidence.scan import ScanState, Windows, load_state, load_windows, save_state, scan, state_path
from hatcat.ranking import BEHAVIOURS


def _loaded(settings: Settings, folder: Path, threads: int):
    import torch

    from hatcat.model import load_model
    from hatcat.probes import ProbeBank, ProbePack

    torch.set_num_threads(threads)
    loaded = load_model(settings.model_name, settings.device, settings.dtype, settings.cache_dir, settings.hf_offline)
    pack = ProbePack.load(folder, model_id=loaded.name, hidden_size=loaded.hidden_size)
    return loaded, ProbeBank(pack, loaded.model.device)


class ScanActor:
    """A Ray actor: the model and the pack, scanning the windows it is given into a fresh state."""

    def __init__(self, settings: Settings, folder: str, threads: int):
        self.loaded, self.bank = _loaded(settings, Path(folder), threads)

    def scan(self, windows: Windows, order: np.ndarray) -> dict:
        state = scan(self.loaded.model, self.bank, windows, order, ScanState.empty(len(self.bank)), None)
        return dataclasses.asdict(state)


def run(
    settings: Settings, folder: Path, max_windows: int | None, threads: int, address: str | None, actors: int
) -> ScanState:
    """Scan what is left of the corpus (up to `max_windows`), saving the state as it goes; return it."""
    loaded, bank = _loaded(settings, folder, threads)
    windows = load_windows(settings.cache_dir, read_corpus(settings.cache_dir), loaded.tokenizer)
    order, path = windows.order(), state_path(settings.cache_dir, bank)
    state = load_state(path, len(bank))
    log = lambda line: print(line, file=sys.stderr, flush=True)
    if address is None and actors == 1:
        return scan(loaded.model, bank, windows, order, state, path, max_windows=max_windows, log=log)
    import ray

    ray.init(address=address, include_dashboard=False, logging_level="WARNING")
    end = len(order) if max_windows is None else min(len(order), state.done + max_windows)
    remote = ray.remote(num_cpus=threads)(ScanActor)
    pool = [remote.remote(settings, str(folder), threads) for _ in range(actors)]
    parts = np.array_split(order[state.done : end], actors)
    for done in ray.get([a.scan.remote(windows, part) for a, part in zip(pool, parts)]):
        state = state.merge(ScanState(**done))
    state.done = end  # the merged parts cover order[done:end]
    save_state(state, path)
    log(f"scanned {state.done}/{len(order)} windows, {int(state.tokens.sum())} tokens")
    return state


def write_evidence(settings: Settings, folder: Path, threads: int = 1) -> dict:
    """The pack's `evidence.parquet`, `calibration.safetensors` and `evidence.json` from the saved scan."""
    from hatcat.evidence import calibration, dashboards, stored, words
    from hatcat.evidence.reference import MANIFEST

    loaded, bank = _loaded(settings, folder, threads)
    docs = read_corpus(settings.cache_dir)
    windows = load_windows(settings.cache_dir, docs, loaded.tokenizer)
    state = load_state(state_path(settings.cache_dir, bank), len(bank))
    if not int(state.tokens.sum()):
        raise SystemExit("error: nothing scanned yet: run python -m hatcat.corpus evidence first")
    dashboards.write(folder, dashboards.rows(state, windows, docs, loaded.tokenizer, bank.concepts))
    cap = bank.act_cap.cpu()
    words_hist = words.histogram(loaded.model.get_input_embeddings(), bank, windows)
    tensors, chosen = calibration.calibrate(
        state, bank.concepts, cap, stored.fingerprint(bank.act_weight.cpu(), bank.act_bias.cpu()), words_hist
    )
    ranked = bank.rankable.cpu()
    dev_hist, dev_tokens = state.hist[0] + state.hist[1], int(state.tokens[:2].sum())
    firings = {
        rule: {
            "dev": round(calibration.expected_firings(dev_hist, dev_tokens, fire, ranked), 4),
            "test": round(calibration.expected_firings(state.hist[2], int(state.tokens[2]), fire, ranked), 4),
        }
        for rule, fire in (("pack_thresholds", cap), ("family_wise", tensors["fire_logit"]))
    }
    rates = calibration.firing_rates(state.hist[2], int(state.tokens[2]), tensors["fire_logit"]).masked_fill(~ranked, 0)
    top = rates.topk(10)
    firings["family_wise"]["test_largest"] = {
        bank.concepts[i]: round(float(v), 5) for v, i in zip(top.values, top.indices)
    }
    info = {
        "pack_checksum": bank.pack.checksum,
        "corpus": {"manifest": MANIFEST.name, "tokens": int(sum(d["tokens"] for d in docs))},
        "scanned": {"windows": state.done, "of_windows": len(windows.lengths), **dashboards.tokens_scanned(state)},
        "calibration": chosen,
        "expected_firings_per_token": firings,
        "rank_rule": "per token: surprisal of the activation + of the words-only logit on the corpus's dev tokens; "
        "response level: mean of the two highest tokens, a child above its parent only with its own evidence",
        "words_tokens": int(words_hist[0].sum()),
        "behaviours": [c for c in bank.concepts if c in BEHAVIOURS],
        "command": "python -m hatcat.corpus evidence",
        "concepts": bank.concepts,
    }
    stored.write(folder, tensors, info)
    return info
