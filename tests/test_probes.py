"""Probe-pack I/O on a synthetic pack (no model): load checks, discovery, ids, replacing one row."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from hatcat.concepts import load_pack
from hatcat.monitor import Monitor
from hatcat.paths import SAFETY_MELD
from hatcat.probes import ProbeBank, ProbePack, ProbePackError, default_folder, discover, per_layer, replace_row
from tests.support import tiny_probe_pack


def test_a_pack_loads_scores_and_is_found_under_its_model_and_concept_pack(tmp_path: Path) -> None:
    folder = tiny_probe_pack(default_folder(tmp_path, "embedded:tiny-model", "p"), model="embedded:tiny-model")
    assert folder == tmp_path / "tiny-model" / "p"
    pack = ProbePack.load(folder, model_id="embedded:tiny-model", hidden_size=8)
    bank = ProbeBank(pack)
    scores = bank.score(torch.zeros(2, 8))
    assert scores.shape == (2, 3) and torch.allclose(scores[0], torch.sigmoid(bank.act_bias))
    assert [(f, m["concepts"]) for f, m in discover(tmp_path)] == [(folder, ["Music", "Deception", "Fear"])]
    assert pack.id == "tiny-model_p"


def _with_manifest(folder: Path, **entries) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, **entries}))


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda f: (f / "manifest.json").unlink(), "no manifest.json"),
        (lambda f: (f / "manifest.json").write_text("{"), "not valid JSON"),
        (lambda f: (f / "text.safetensors").write_bytes(b"x" * 64), "text.safetensors is corrupt"),
        (lambda f: (f / "metrics.json").unlink(), "metrics.json is missing"),
        (lambda f: _with_manifest(f, behaviour_rows={"Deception": {}}), "behaviour_rows needs"),
        (lambda f: _with_manifest(f, behaviour_rows={"Nope": {"threshold": 0.5}}), "behaviour_rows needs"),
    ],
)
def test_a_damaged_pack_is_refused_with_the_reason(tmp_path: Path, spoil, message: str) -> None:
    folder = tiny_probe_pack(tmp_path / "pack")
    spoil(folder)
    with pytest.raises(ProbePackError, match=message):
        ProbePack.load(folder)


def test_a_pack_for_another_model_or_width_is_refused(tmp_path: Path) -> None:
    folder = tiny_probe_pack(tmp_path / "pack")
    with pytest.raises(ProbePackError, match="running model is other"):
        ProbePack.load(folder, model_id="other")
    with pytest.raises(ProbePackError, match="hidden size 8"):
        ProbePack.load(folder, hidden_size=16)


def test_replacing_a_row_changes_only_that_row_and_keeps_the_pack_valid(tmp_path: Path) -> None:
    folder = tiny_probe_pack(tmp_path / "pack")
    before = ProbePack.load(folder)
    metrics = {"f1": 0.5, "auroc": None, "n_pos": 2, "n_neg": 2, "precision": 0.5, "recall": 0.5}
    row = replace_row(folder, "Fear", torch.ones(8), -2.0, 0.9, metrics, ("note", {"by": "test"}))
    after = ProbePack.load(folder)  # checksums rewritten
    assert row == 2 and after.manifest["note"] == {"by": "test"}
    assert torch.equal(after.tensors["activation"]["weight"][:2], before.tensors["activation"]["weight"][:2])
    assert float(after.tensors["activation"]["bias"][2]) == -2.0
    assert after.manifest["thresholds"]["activation"] == [0.4, 0.5, 0.9]
    assert after.metrics["per_concept"]["Fear"]["layer"] == 1
    assert after.metrics["per_layer"]["1"] == {"mean_f1": 0.7, "mean_auroc": 0.9, "n": 3}  # null AUROC left out
    with pytest.raises(ProbePackError, match="no 'Zebra'"):
        replace_row(folder, "Zebra", torch.ones(8), 0.0, 0.5, {})
    assert json.loads((folder / "manifest.json").read_text())["checksums"]


def test_per_layer_means_skip_concepts_without_both_classes() -> None:
    per = {
        "a": {"layer": 0, "f1": 1.0, "auroc": 1.0, "n_pos": 3, "n_neg": 3},
        "b": {"layer": 0, "f1": 0.0, "auroc": math.nan, "n_pos": 3, "n_neg": 3},
        "c": {"layer": 0, "f1": 0.0, "auroc": 0.0, "n_pos": 0, "n_neg": 3},
    }
    assert per_layer(per) == {"0": {"mean_f1": 0.5, "mean_auroc": 1.0, "n": 2}}


def test_changed_thresholds_make_a_new_monitor_and_leave_the_served_one_alone(tmp_path: Path) -> None:
    bank = ProbeBank(ProbePack.load(tiny_probe_pack(tmp_path / "pack")), torch.device("cpu"))
    served = Monitor(bank, load_pack(melds=[SAFETY_MELD]))
    stricter = served.with_thresholds({"Music": 0.9})
    assert stricter.overrides() == {"Music": 0.9} and served.overrides() == {}
    reset = stricter.with_thresholds({"Fear": 0.1}, reset=True)  # a profile: the pack's thresholds, then its own
    assert reset.overrides() == {"Fear": 0.1}
