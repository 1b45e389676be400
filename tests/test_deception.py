"""Deception probe data (splits, content-matched dialogues), recipes (synthetic states; a few real texts), pack injection."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import yaml

from hatcat.paths import DATA
from hatcat.probes import ProbePack
from hatcat.training import deception as d
from hatcat.training import deception_recipes as r
from hatcat.training.fit import LinearProbes, auroc
from tests.support import tiny_probe_pack


def test_splits_are_disjoint_by_fact_and_wording() -> None:
    facts = d.load_facts()
    splits = d.split_facts(facts)
    sets = {k: set(v.tolist()) for k, v in splits.items()}
    assert not sets["train"] & sets["heldout"] and not sets["val"] & sets["heldout"] and not sets["train"] & sets["val"]
    assert sum(map(len, sets.values())) == len(facts)
    items = d.build_items(facts, splits)
    by_group = lambda *gs: [it for it in items if it.group in gs]
    fitted, dev = by_group("train"), by_group("dev")
    held = by_group("heldout_seen", "heldout_unseen", "honest_truefalse")
    assert {it.fact for it in fitted + dev}.isdisjoint({it.fact for it in held})
    assert {it.fact for it in fitted}.isdisjoint({it.fact for it in dev})
    assert all(it.wording < d.N_FIT_WORDINGS for it in fitted + by_group("heldout_seen", "honest_truefalse"))
    assert all(d.N_FIT_WORDINGS <= it.wording < d.N_TRAIN_WORDINGS for it in dev)  # dev wordings: never fitted
    assert all(it.wording >= d.N_TRAIN_WORDINGS for it in by_group("heldout_unseen"))
    assert sum(d.keyword_free(w) for w in range(d.N_TRAIN_WORDINGS, len(d.WORDINGS))) >= 4
    # an instructed pair differs only in the instruction
    pair = [it for it in fitted if it.truth == 1][:2]
    assert pair[0].statement == pair[1].statement and {pair[0].label, pair[1].label} == {0, 1}
    assert pair[0].pair == pair[1].pair


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def test_dialogues_are_content_matched_and_apart_from_the_roleplay_set() -> None:
    items = d.dialogue_items(d.load_dialogues())
    assert {it.group for it in items} == {"dialogue_train", "dialogue_dev"}
    by_answer: dict[str, list[int]] = {}
    for it in items:
        by_answer.setdefault(it.statement, []).append(it.label)
    # every answer is honest once and deceptive once: what it says cannot tell the classes apart
    assert all(sorted(labels) == [0, 1] for labels in by_answer.values())
    assert not any(d.KEYWORDS.search(it.statement) for it in items)
    roleplay = yaml.safe_load((DATA / "eval" / "roleplay_deception.yaml").read_text())["pairs"]
    test_texts = [p[k] for p in roleplay for k in ("context", "question", "honest", "deceptive")]
    test_ngrams = {tuple(w[i : i + 5]) for t in test_texts for w in [_words(t)] for i in range(len(w) - 4)}
    for s in d.load_dialogues():
        for k in ("context", "fact_a", "fact_b", "question", "answer_a", "answer_b"):
            w = _words(s[k])
            shared = {tuple(w[i : i + 5]) for i in range(len(w) - 4)} & test_ngrams
            assert not shared, (s["id"], k, shared)


def _synthetic_cache(tmp_path, n_pairs: int = 120, hidden: int = 16, seed: int = 0):
    """Pairs of texts sharing large per-pair 'content' (off the signal axis); deceptive tokens add a small fixed direction."""
    gen = torch.Generator().manual_seed(seed)
    signal = torch.zeros(hidden)
    signal[0] = 1.0
    cache = d.TokenStateCache(tmp_path, "synthetic", 0)
    items = []
    for p in range(n_pairs):
        content = torch.randn(4, hidden, generator=gen)
        content[:, 0] = 0
        for label in (0, 1):
            it = d.Item(
                f"context {p} {label}", f" answer {p}", label, "train" if p % 2 else "dialogue_train", pair=str(p)
            )
            cache.rows[it.key] = (content + 0.3 * torch.randn(4, hidden, generator=gen) + label * signal).half()
            items.append(it)
    return cache, items


@pytest.mark.parametrize(
    "recipe", [r.Recipe(p, f, "both", c) for p in r.POOLINGS for f in r.FITS for c in (False, True)]
)
def test_every_recipe_separates_held_out_pairs(tmp_path, recipe) -> None:
    cache, items = _synthetic_cache(tmp_path)
    train, held = items[:160], items[160:]
    probe = r.fit_recipe(cache, recipe, train, held)
    scores = r.item_scores(probe, cache, held, recipe.pooling)
    assert auroc(scores, np.array([it.label for it in held], dtype=float)) >= 0.75
    assert probe.weight.shape == (1, 16) and 0 < float(probe.threshold[0]) < 1


def test_centring_subtracts_each_pairs_mean_and_drops_unpaired_rows(tmp_path) -> None:
    cache, items = _synthetic_cache(tmp_path, n_pairs=3)
    lone = d.Item("lone context", " lone answer", 1, "train", pair="lone")
    cache.rows[lone.key] = torch.ones(4, 16).half()
    items.append(lone)
    x, owner, position = r.pooled(cache, items, "token")
    centred, kept = r._centre(x, items, owner, position)
    assert len(kept) == 3 * 2 * 4 and not (owner[kept] == len(items) - 1).any()
    for p in range(3):  # the two texts of a pair cancel at every token position
        rows = np.flatnonzero(np.isin(owner[kept], [2 * p, 2 * p + 1]))
        assert torch.allclose(centred[rows].reshape(2, 4, 16).sum(0), torch.zeros(4, 16), atol=1e-4)
    last, _, _ = r.pooled(cache, items, "last")
    assert torch.equal(last[0], cache.rows[items[0].key][-1].float())


@pytest.mark.slow
def test_recipe_trains_and_scores_on_a_few_real_texts(engine, tmp_path) -> None:
    facts = [f for f in d.load_facts() if f[1] == 1][:8]
    items = [
        d.Item(d.instructed(d.WORDINGS[w][label]), " " + text, label, "train", i, w, 1, f"{i}/{w}")
        for i, (text, _) in enumerate(facts)
        for w in (0, 3)
        for label in (0, 1)
    ]
    items += d.dialogue_items(d.load_dialogues()[:4])
    layer = 6
    cache = d.TokenStateCache(tmp_path, "test-model", layer)
    assert d.fill_cache(engine.model, engine.tokenizer, items, [cache], batch_size=16) == len(items)
    assert d.fill_cache(engine.model, engine.tokenizer, items, [cache]) == 0  # cached
    assert len(d.TokenStateCache(tmp_path, "test-model", layer).rows) == len(items)  # on disk
    for it in items:  # one state per statement token
        n = len(engine.tokenizer(it.statement, add_special_tokens=False).input_ids)
        assert cache.rows[it.key].shape == (n, engine.loaded.hidden_size)
    instructed = [it for it in items if it.group == "train"]
    probe = r.fit_recipe(cache, r.Recipe("last", "lda", "both", False), items, items)
    scores = r.item_scores(probe, cache, instructed, "last")
    assert auroc(scores, np.array([it.label for it in instructed], dtype=float)) >= 0.9


def test_inject_changes_only_the_deception_row(tmp_path) -> None:
    folder = tiny_probe_pack(tmp_path / "pack")
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
    folder = tiny_probe_pack(tmp_path / "pack", layer=5)
    manifest = (folder / "manifest.json").read_text()
    probe = LinearProbes(torch.zeros(1, 8), torch.zeros(1), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="taps layer 5"):
        d.inject(folder, probe, 3, {}, {})
    assert (folder / "manifest.json").read_text() == manifest
    assert json.loads(manifest)["tap_layer"] == 5
