"""The deception probe recipe on a few facts (real model), its data splits, and pack injection."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hatcat.probes import ProbePack, save_pack
from hatcat.training import deception as d
from hatcat.training.fit import LinearProbes, auroc


def test_splits_are_disjoint_by_fact_and_wording() -> None:
    facts = d.load_facts()
    splits = d.split_facts(facts)
    sets = {k: set(v.tolist()) for k, v in splits.items()}
    assert not sets["train"] & sets["heldout"] and not sets["val"] & sets["heldout"] and not sets["train"] & sets["val"]
    assert sum(map(len, sets.values())) == len(facts)
    items = d.build_items(facts, splits)
    assert {it.fact for it in items if it.group in ("train", "val")}.isdisjoint(
        {it.fact for it in items if it.group.startswith(("heldout", "honest"))}
    )
    assert all(it.wording >= d.N_TRAIN_WORDINGS for it in items if it.group == "heldout_unseen")
    assert all(it.wording < d.N_TRAIN_WORDINGS for it in items if it.group != "heldout_unseen" and it.wording >= 0)
    assert sum(d.keyword_free(w) for w in range(d.N_TRAIN_WORDINGS, len(d.WORDINGS))) >= 4
    # an instructed pair differs only in the instruction
    pair = [it for it in items if it.group == "train" and it.truth == 1][:2]
    assert pair[0].statement == pair[1].statement and {pair[0].label, pair[1].label} == {0, 1}


def test_probe_separates_instructions_on_training_data(engine, tmp_path) -> None:
    facts = [f for f in d.load_facts() if f[1] == 1][:8]
    items = [
        d.Item(d.instructed(d.WORDINGS[w][label]), " " + text, label, "train", i, w, 1)
        for i, (text, _) in enumerate(facts)
        for w in (0, 3)
        for label in (0, 1)
    ]
    layer = 6
    cache = d.TokenStateCache(tmp_path, "test-model", layer)
    assert d.fill_cache(engine.model, engine.tokenizer, items, [cache], batch_size=16) == len(items)
    assert d.fill_cache(engine.model, engine.tokenizer, items, [cache]) == 0  # cached
    assert len(d.TokenStateCache(tmp_path, "test-model", layer).rows) == len(items)  # on disk
    for it in items:  # one state per statement token
        n = len(engine.tokenizer(it.statement, add_special_tokens=False).input_ids)
        assert cache.rows[it.key].shape == (n, engine.loaded.hidden_size)
    probe = d.fit_deception(cache, items, items)
    scores, _, _ = d.item_scores(probe, cache, items)
    assert auroc(scores, np.array([it.label for it in items], dtype=float)) >= 0.9


def _tiny_pack(folder, hidden: int = 8, layer: int = 3):
    concepts = ["Music", "Deception", "Fear"]
    gen = torch.Generator().manual_seed(0)
    weights = {
        side: (torch.randn(3, hidden, generator=gen), torch.randn(3, generator=gen), torch.tensor([0.4, 0.5, 0.6]))
        for side in ("activation", "text")
    }
    per = {
        c: {
            "layer": 1,
            "f1": 0.8,
            "auroc": 0.9,
            "precision": 0.8,
            "recall": 0.8,
            "threshold": 0.5,
            "n_pos": 4,
            "n_neg": 4,
        }
        for c in concepts
    }
    metrics = {
        "per_concept": per,
        "per_layer": {"1": {"mean_f1": 0.8, "mean_auroc": 0.9, "n": 3}},
        "text": {"per_concept": per, "per_layer": {}},
    }
    manifest = {
        "model": "m",
        "hidden_size": hidden,
        "tap_layer": layer,
        "pooling": "last",
        "concept_pack": {"id": "p", "checksum": "x"},
        "concepts": concepts,
    }
    return save_pack(folder, manifest, weights, metrics)


def test_inject_changes_only_the_deception_row(tmp_path) -> None:
    folder = _tiny_pack(tmp_path / "pack")
    before = ProbePack.load(folder)
    probe = LinearProbes(torch.full((1, 8), 0.25), torch.tensor([-1.0]), torch.tensor([0.7]))
    metrics = {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "auroc": 0.95, "threshold": 0.7, "n_pos": 10, "n_neg": 10}
    row = d.inject(folder, probe, 3, {"source": "test"}, metrics)
    after = ProbePack.load(folder)  # checksums updated: still loads
    assert row == 1
    w0, w1 = before.tensors["activation"]["weight"], after.tensors["activation"]["weight"]
    assert (
        torch.equal(w1[1], torch.full((8,), 0.25, dtype=w1.dtype))
        and float(after.tensors["activation"]["bias"][1]) == -1.0
    )
    assert torch.equal(w0[[0, 2]], w1[[0, 2]]) and torch.equal(
        before.tensors["activation"]["bias"][[0, 2]], after.tensors["activation"]["bias"][[0, 2]]
    )
    assert torch.equal(before.tensors["text"]["weight"], after.tensors["text"]["weight"])
    assert after.manifest["thresholds"]["activation"] == [0.4, 0.7, 0.6]
    assert after.manifest["thresholds"]["text"] == before.manifest["thresholds"]["text"]
    assert after.manifest["deception_probe"] == {"source": "test"}
    assert (
        after.metrics["per_concept"]["Deception"]["auroc"] == 0.95
        and after.metrics["per_concept"]["Deception"]["layer"] == 1
    )
    assert after.metrics["per_concept"]["Music"] == before.metrics["per_concept"]["Music"]
    assert after.metrics["text"] == before.metrics["text"]


def test_inject_refuses_another_tap_layer(tmp_path) -> None:
    folder = _tiny_pack(tmp_path / "pack", layer=5)
    manifest = (folder / "manifest.json").read_text()
    probe = LinearProbes(torch.zeros(1, 8), torch.zeros(1), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="taps layer 5"):
        d.inject(folder, probe, 3, {}, {})
    assert (folder / "manifest.json").read_text() == manifest
    assert json.loads(manifest)["tap_layer"] == 5
