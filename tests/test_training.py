"""Probe training end to end on the real embedded model, and refusal of bad probe packs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hatcat.concepts import load_pack
from hatcat.engine import Engine
from hatcat.paths import ROOT
from hatcat.probes import ProbeBank, ProbePack, ProbePackError
from hatcat.tap import hidden_at
from hatcat.train import DEFAULT_MELDS
from hatcat.training.prompts import SPLITS, build_prompts
from hatcat.training.run import RECALIBRATION, Side, Texts, TrainSettings, training_record, write_pack
from hatcat.training.states import TokenStateCache
from tests.support import SMALL_PACK as SMALL_PACK_CONCEPTS

CONCEPTS = SMALL_PACK_CONCEPTS


@pytest.fixture(scope="module")
def trained(small_probe_pack: Path) -> tuple[Path, dict]:
    return small_probe_pack, json.loads((small_probe_pack / "manifest.json").read_text())


def test_held_out_prompts_never_repeat_a_training_string() -> None:
    pack = load_pack(melds=DEFAULT_MELDS)
    prompts = build_prompts(pack, list(CONCEPTS))
    by_split = {s: {p.text for p in prompts if p.split == s} for s in SPLITS}
    assert not by_split["train"] & by_split["val"]
    assert not by_split["train"] & by_split["test"]
    assert not by_split["val"] & by_split["test"]


def test_recalibration_records_where_its_directions_came_from(tmp_path: Path) -> None:
    """A recalibrated pack's manifest names its directions' fit (followed back through an earlier
    recalibration) and what was redone, not fit settings the run never used."""
    first = {"layers": [0], "pooling": "last", "shrinkage": 0.2, "prompts": 900, "created": "T0"}
    (tmp_path / "manifest.json").write_text(json.dumps({"training": first}))
    once = training_record(TrainSettings(method="dom", directions_from=str(tmp_path)), 0, "T1")
    assert once["directions"] == {"method": "lda", "from": "training templates", **first}
    assert once["recalibration"] == RECALIBRATION
    assert not {"method", "pooling", "k_texts", "directions_from", "texts"} & set(once)
    (tmp_path / "manifest.json").write_text(json.dumps({"training": once}))
    twice = training_record(TrainSettings(directions_from=str(tmp_path)), 0, "T2")
    assert twice["directions"] == once["directions"] and twice["created"] == "T2"
    plain = training_record(TrainSettings(method="dom", k_texts=3), 40, "T3")
    assert (plain["method"], plain["k_texts"], plain["texts"]) == ("dom", 3, 40) and "directions" not in plain


def test_training_records_control_fpr_natural_recall_and_template_metrics(trained: tuple[Path, dict]) -> None:
    folder, report = trained
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["concepts"]) == set(CONCEPTS)
    assert len(manifest["divergence_scale"]) == len(CONCEPTS)
    metrics = json.loads((folder / "metrics.json").read_text())["per_concept"]
    assert set(metrics) == set(CONCEPTS)
    for m in metrics.values():
        assert {"threshold", "control_fpr_dev", "control_fpr_test", "control_quantiles", "auroc", "f1"} <= set(m)
        # the threshold is the control tokens' (1 - level) quantile, level <= the 1% target
        assert m["control_fpr_dev"] <= manifest["threshold_level"] + 0.001 <= 0.011
    assert report["training"]["texts"] > 100  # negatives' texts included
    assert metrics["Music"]["n_natural"] == 6  # the dev scenes: recall is reported, never fitted
    assert metrics["Music"]["auroc"] > 0.8


def test_trained_probe_separates_a_positive_from_a_clear_negative(engine: Engine, trained: tuple[Path, dict]) -> None:
    pack = ProbePack.load(trained[0], model_id=engine.loaded.name, hidden_size=engine.loaded.hidden_size)
    bank = ProbeBank(pack)
    texts = [
        "The orchestra played a beautiful symphony and the audience sang along.",
        "The tax form lists the deductions for the year.",
    ]
    engine.tokenizer.padding_side = "left"
    inputs = engine.tokenizer(texts, return_tensors="pt", padding=True)
    hidden = hidden_at(engine.model, dict(inputs), [bank.tap_layer])[bank.tap_layer][:, -1]
    music = bank.index["Music"]
    probs = bank.score(hidden)[:, music]
    assert probs[0] > bank.act_threshold[music] > probs[1]


def test_pack_for_another_model_is_refused(trained: tuple[Path, dict]) -> None:
    with pytest.raises(ProbePackError, match="trained on embedded:gemma-3-270m"):
        ProbePack.load(trained[0], model_id="embedded:smollm2-135m")
    with pytest.raises(ProbePackError, match="hidden size"):
        ProbePack.load(trained[0], hidden_size=576)


def test_pack_with_corrupted_weights_is_refused(trained: tuple[Path, dict], tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(trained[0], copy)
    weights = copy / "activation.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ProbePackError, match="activation.safetensors is corrupt"):
        ProbePack.load(copy)


def test_pack_for_another_concept_pack_is_refused(trained: tuple[Path, dict]) -> None:
    pack = ProbePack.load(trained[0])
    with pytest.raises(ProbePackError, match="concept pack"):
        pack.check_concepts("other-pack", "0" * 64, set(CONCEPTS))


@pytest.mark.slow  # starts a Python that imports torch
def test_cli_documents_every_option_and_refuses_unknown_concepts() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "hatcat.train", "--help"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout
    for option in ("--layers", "--train-text-probes", "--concepts", "--concept-pack", "--model", "--limit", "--out"):
        assert option in help_text
    bad = subprocess.run(
        [sys.executable, "-m", "hatcat.train", "--concepts", "NoSuchConcept"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["hatcat.train: unknown concept(s): NoSuchConcept"]


@pytest.mark.parametrize("pooling", ["last", "mean", "all"])
def test_the_manifest_records_the_pooling_the_run_used(tmp_path: Path, pooling: str) -> None:
    gen = torch.Generator().manual_seed(0)
    side = lambda: Side(torch.randn(2, 8, generator=gen), torch.zeros(2), torch.randn(64, 2, generator=gen))
    texts = Texts(["Fear", "Music"], [], {}, ["a text"], {"dev": [], "test": []}, {}, ([], []))
    concepts = load_pack()
    folder = write_pack(
        tmp_path / "pack",
        {"model": "m", "model_class": "M", "hidden_size": 8},
        concepts,
        TrainSettings(pooling=pooling),
        texts,
        side(),
        side(),
        torch.ones(2),
        0.01,
        {"per_concept": {}},
    )
    pack = ProbePack.load(folder, model_id="m", hidden_size=8)
    assert pack.manifest["pooling"] == pooling and pack.manifest["concepts"] == ["Fear", "Music"]


def test_the_token_state_cache_keeps_finished_shards_and_skips_a_half_written_one(tmp_path: Path) -> None:
    cache = TokenStateCache(tmp_path, "embedded:m", 3)
    states = [torch.arange(6.0).reshape(2, 3), torch.ones(1, 3)]
    cache.add(["first text", "second text"], states)
    assert cache.missing(["second text", "third text", "third text"]) == ["third text"]
    cache.add(["an item"], [torch.zeros(4, 3)], key=lambda item: "item-key")
    (cache.folder / "shard-killed.safetensors").write_bytes(b"")  # its key list was never written
    again = TokenStateCache(tmp_path, "embedded:m", 3)
    assert torch.equal(again.get("first text"), states[0]) and again.get("second text").shape == (1, 3)
    assert again.rows["item-key"].shape == (4, 3) and len(again.rows) == 3
