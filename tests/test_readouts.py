"""Behaviour read-outs: written into a probe pack, verified on load, and read from their own block in the stream."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from hatcat.engine import Engine
from hatcat.generation import GenerationSettings, encode_prompt
from hatcat.probes import ProbePack, ProbePackError
from hatcat.readouts import OUTPUT_FEATURES, Readouts, install, output_features, token_stats

D = 8


def _weights(d: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "falsehood.state_weight": torch.randn(d, generator=g) / d**0.5,
        "falsehood.output_weight": torch.tensor([0.5, -0.25, 0.125, 1.0]),
        "falsehood.bias": torch.tensor([0.1]),
    }


def _entry(block: int, threshold: float = 0.0) -> dict:
    return {"falsehood": {"block": block, "threshold": threshold, "output_features": list(OUTPUT_FEATURES)}}


def test_installed_readouts_load_and_fire_at_their_threshold(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"hidden_size": D, "checksums": {}}))
    weights = _weights(D)
    install(tmp_path, weights, _entry(block=3, threshold=0.2))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert "readouts.safetensors" in manifest["checksums"] and manifest["readouts"]["falsehood"]["block"] == 3
    readouts = Readouts.load(tmp_path, manifest)
    state, outputs = torch.ones(D), torch.tensor([-1.0, -2.0, 0.5, 0.4])
    expected = float(weights["falsehood.state_weight"].sum() + weights["falsehood.output_weight"] @ outputs + 0.1)
    got = readouts.score({3: state}, outputs)["falsehood"]
    assert got["score"] == pytest.approx(expected, abs=1e-4)
    assert got["fired"] == (expected >= 0.2) and got["threshold"] == 0.2
    install(tmp_path, weights, {})  # no entries: the read-outs leave the pack
    assert Readouts.load(tmp_path, json.loads((tmp_path / "manifest.json").read_text())) is None


def test_readouts_of_the_wrong_size_are_refused(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"hidden_size": D + 1, "checksums": {}}))
    install(tmp_path, _weights(D), _entry(block=3))
    with pytest.raises(ProbePackError, match="wrong size"):
        Readouts.load(tmp_path, json.loads((tmp_path / "manifest.json").read_text()))


def test_a_readout_reads_its_own_block_in_the_stream_and_in_analysis(engine: Engine, tmp_path: Path) -> None:
    """A read-out at block 9 beside the bank at 15: the stream's and /v1/analyze's scores equal an offline forward's."""
    folder = tmp_path / "pack"
    shutil.copytree(engine.probes.folder, folder)
    weights = _weights(engine.loaded.hidden_size)
    install(folder, weights, _entry(block=9))
    ProbePack.load(folder)  # the checksums still hold
    probed = Engine(engine.settings, engine.loaded, engine.concepts)
    probed.load_probes(folder)
    assert probed.monitor.blocks == (9, probed.bank.tap_layer)
    prompt = "The capital city of France is"
    events = list(probed.generate(prompt, GenerationSettings(max_tokens=5, temperature=0.0)))
    tokens = [e.step.token_id for e in events[:-1]]
    behaviour = events[-1].summary.to_dict()["behaviours"]["falsehood"]
    # offline: one forward of prompt + output; the states (block 9) and distributions that produced each token
    ids = encode_prompt(probed.tokenizer, prompt)
    with torch.no_grad():
        out = probed.model(input_ids=torch.tensor([ids + tokens]), output_hidden_states=True)
    produced = slice(len(ids) - 1, len(ids) + len(tokens) - 1)
    state = out.hidden_states[10][0, produced].float().mean(0)  # hidden_states[0] is the embedding
    took, entropy = token_stats(out.logits[0, produced].float().log_softmax(-1), torch.tensor(tokens))
    expected = float(
        state @ weights["falsehood.state_weight"]
        + weights["falsehood.output_weight"] @ output_features(took, entropy)
        + weights["falsehood.bias"]
    )
    assert behaviour["score"] == pytest.approx(expected, abs=0.05 + 0.02 * abs(expected))
    assert behaviour["fired"] == (behaviour["score"] >= 0.0)
    # /v1/analyze reads a given text the same way: each token after the first on what produced it
    text = prompt + events[-1].finished.text
    ((_, document),) = probed.analyze([text])
    whole = probed.tokenizer(text).input_ids
    with torch.no_grad():
        out = probed.model(input_ids=torch.tensor([whole]), output_hidden_states=True)
    produced = slice(0, len(whole) - 1)
    took, entropy = token_stats(out.logits[0, produced].float().log_softmax(-1), torch.tensor(whole[1:]))
    expected = float(
        out.hidden_states[10][0, produced].float().mean(0) @ weights["falsehood.state_weight"]
        + weights["falsehood.output_weight"] @ output_features(took, entropy)
        + weights["falsehood.bias"]
    )
    assert document["summary"]["behaviours"]["falsehood"]["score"] == pytest.approx(
        expected, abs=0.05 + 0.02 * abs(expected)
    )
