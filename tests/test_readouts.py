"""Behaviour read-outs: written into a probe pack, verified on load, and read from their own block in the stream."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
import torch

from hatcat.engine import Engine
from hatcat.generation import GenerationSettings, encode_prompt
from hatcat.probes import ProbePack, ProbePackError
from hatcat.readouts import OUTPUT_FEATURES, Readouts, install, output_features, token_stats
from hatcat.tap import tap
from tests.support import start_app, stop_app

D = 8


def _weights(d: int, names: tuple[str, ...] = ("falsehood",), seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in names:
        out[f"{name}.state_weight"] = torch.randn(d, generator=g) / d**0.5
        out[f"{name}.output_weight"] = torch.tensor([0.5, -0.25, 0.125, 1.0])
        out[f"{name}.bias"] = torch.tensor([0.1])
    return out


def _entry(block: int, threshold: float = 0.0, name: str = "falsehood") -> dict:
    return {name: {"block": block, "threshold": threshold, "output_features": list(OUTPUT_FEATURES)}}


def _offline(
    model: torch.nn.Module, weights: dict[str, torch.Tensor], name: str, block: int, ids: list[int], start: int
):
    """The read-out `name` at `block` over tokens ids[start:], each on the state and distribution that
    produced it, from a plain forward of the whole model over `ids` alone (all its logits)."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    produced = slice(start - 1, len(ids) - 1)
    state = out.hidden_states[block + 1][0, produced].float().mean(0)  # hidden_states[0] is the embedding
    took, entropy = token_stats(out.logits[0, produced].float().log_softmax(-1), torch.tensor(ids[start:]))
    return float(
        state @ weights[f"{name}.state_weight"]
        + weights[f"{name}.output_weight"] @ output_features(took, entropy)
        + weights[f"{name}.bias"]
    )


def _pack_with_readouts(engine: Engine, folder: Path, entries: dict) -> dict[str, torch.Tensor]:
    """A copy of the engine's probe pack with read-outs of random weights at `entries`' blocks; their weights."""
    shutil.copytree(engine.probes.folder, folder)
    weights = _weights(engine.loaded.hidden_size, tuple(entries))
    install(folder, weights, entries)
    ProbePack.load(folder)  # the checksums still hold
    return weights


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


def test_padded_texts_are_read_as_each_text_alone(tmp_path: Path) -> None:
    """`read_texts` over right-padded rows: each row's scores equal those of the row alone (padding never counts)."""
    (tmp_path / "manifest.json").write_text(json.dumps({"hidden_size": D, "checksums": {}}))
    install(tmp_path, _weights(D), _entry(block=2))
    readouts = Readouts.load(tmp_path, json.loads((tmp_path / "manifest.json").read_text()))
    g = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(D, 11, bias=False)
    lengths = [5, 2, 3]
    last, state = torch.randn(3, 5, D, generator=g), torch.randn(3, 5, D, generator=g)
    ids = torch.randint(0, 11, (3, 5), generator=g)
    together = readouts.read_texts(head, last, {2: state}, ids, lengths)
    for r, n in enumerate(lengths):
        alone = readouts.read_texts(head, last[r : r + 1, :n], {2: state[r : r + 1, :n]}, ids[r : r + 1, :n], [n])
        assert together[r]["falsehood"]["score"] == pytest.approx(alone[0]["falsehood"]["score"], abs=2e-4)


def test_readouts_of_the_wrong_size_are_refused(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"hidden_size": D + 1, "checksums": {}}))
    install(tmp_path, _weights(D), _entry(block=3))
    with pytest.raises(ProbePackError, match="wrong size"):
        Readouts.load(tmp_path, json.loads((tmp_path / "manifest.json").read_text()))


def test_a_readout_reads_its_own_block_in_the_stream_and_in_analysis(engine: Engine, tmp_path: Path) -> None:
    """A read-out at block 9 beside the bank at 15: the stream's and the analysis' scores equal an offline
    forward's, and the analysis of a batch runs the model once (no second forward for the read-outs)."""
    folder = tmp_path / "pack"
    weights = _pack_with_readouts(engine, folder, _entry(block=9))
    probed = Engine(engine.settings, engine.loaded, engine.concepts)
    probed.load_probes(folder)
    assert probed.monitor.blocks == (9, probed.bank.tap_layer)
    prompt = "The capital city of France is"
    events = list(probed.generate(prompt, GenerationSettings(max_tokens=5, temperature=0.0)))
    tokens = [e.step.token_id for e in events[:-1]]
    behaviour = events[-1].summary.to_dict()["behaviours"]["falsehood"]
    ids = encode_prompt(probed.tokenizer, prompt)
    expected = _offline(probed.model, weights, "falsehood", 9, ids + tokens, len(ids))
    assert behaviour["score"] == pytest.approx(expected, abs=0.05 + 0.02 * abs(expected))
    assert behaviour["fired"] == (behaviour["score"] >= 0.0)
    # the analysis reads a given text the same way: each token after the first on what produced it
    texts = [
        prompt + events[-1].finished.text,
        "Paris is a city in Italy.",
        "A longer text, padded less than the others.",
    ]
    runs = []
    first_block = probed.loaded.layers[0].register_forward_hook(lambda *_: runs.append(1))
    try:
        documents = dict(probed.analyze(texts))
    finally:
        first_block.remove()
    assert len(runs) == 1  # one batch, one forward: concepts and read-outs from the same pass
    for i, text in enumerate(texts):
        expected = _offline(probed.model, weights, "falsehood", 9, probed.tokenizer(text).input_ids, 1)
        got = documents[i]["summary"]["behaviours"]["falsehood"]["score"]
        assert got == pytest.approx(expected, abs=0.05 + 0.02 * abs(expected))


@pytest.mark.slow
def test_analyze_api_behaviours_equal_a_direct_readout_of_the_same_text(engine: Engine, tmp_path: Path) -> None:
    """`/v1/analyze` on the real app: two read-outs at blocks 6 and 9 beside the bank at 15, texts of
    several lengths in one request; each text's behaviours equal a plain offline forward's."""
    entries = {**_entry(block=6, threshold=0.5, name="falsehood"), **_entry(block=9, name="withholding")}
    weights = _pack_with_readouts(engine, tmp_path / "pack", entries)
    texts = ["The Eiffel Tower is in Rome.", "Bees make honey.", "Water boils at 100 degrees Celsius at sea level."]
    proc, base = start_app({"HATCAT_PROBE_PACK": str(tmp_path / "pack")}, tmp_path / "app.log")
    try:
        reply = httpx.post(f"{base}/v1/analyze", json={"input": texts, "top_k": 1}, timeout=300)
    finally:
        stop_app(proc)
    assert reply.status_code == 200, reply.text
    for document in reply.json()["data"]:
        ids = engine.tokenizer(texts[document["index"]]).input_ids
        for name, entry in entries.items():
            expected = _offline(engine.model, weights, name, entry["block"], ids, 1)
            got = document["summary"]["behaviours"][name]
            assert got["score"] == pytest.approx(expected, abs=0.05 + 0.02 * abs(expected))
            assert got["fired"] == (got["score"] >= entry["threshold"])


def test_the_deception_row_is_reported_as_a_behaviour_in_analysis_and_stream(engine: Engine) -> None:
    """The shipped pack's `Deception` row is not a concept: never a top concept, reported in `behaviours`
    as its mean activation over the response against the threshold measured on ordinary generated text."""
    measured = engine.bank.pack.manifest["behaviour_rows"]["Deception"]["threshold"]
    text = "I told the inspector the brakes were fine, although I knew they had failed."
    [(_, document)] = list(engine.analyze([text], concepts=["Deception"]))
    row, stats = document["summary"]["behaviours"]["Deception"], document["concepts"][0]
    assert stats["concept"] == "Deception" and row["score"] == pytest.approx(stats["mean_activation"], abs=1e-4)
    assert row["threshold"] == measured and row["fired"] == (row["score"] >= measured)
    assert all(c["concept"] != "Deception" for c in document["summary"]["top_concepts"])
    # a stream: the mean of the row over the states that produced its tokens, from a plain forward
    prompt = "The salesman promised the car had never been in an accident"
    events = list(engine.generate(prompt, GenerationSettings(max_tokens=6, temperature=0.0)))
    streamed = events[-1].summary.to_dict()["behaviours"]["Deception"]
    ids = encode_prompt(engine.tokenizer, prompt) + [e.step.token_id for e in events[:-1]]
    with torch.inference_mode(), tap(engine.model, engine.bank.tap_layer) as tapped:
        engine.model(input_ids=torch.tensor([ids], device=engine.loaded.device))
    producing = tapped.hidden[0, len(ids) - len(events[:-1]) - 1 : len(ids) - 1]
    expected = engine.bank.score(producing)[:, engine.bank.index["Deception"]].mean().item()
    assert streamed["score"] == pytest.approx(expected, abs=0.02)
    assert streamed["threshold"] == measured
