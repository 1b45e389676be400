"""Batched analysis: the padded-batch path gives each text the records it gets alone; `/v1/analyze`
takes a list of texts (`input`, with a bound); the CLI writes Parquet and refuses bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
import torch

from hatcat.analyze import main as analyze_main
from hatcat.engine import Engine
from hatcat.pipeline import analyze_text
from tests.support import run_main

TEXTS = [
    "She was terrified of the dark road ahead.",
    "Music.",
    "The committee voted to approve the budget after a long and tiring debate about schools.",
    "He lied about the money.",
]
# Activation probabilities of a text scored in a padded batch vs alone: fp32 sums may be reordered
# (1e-4) and records round to 4 decimals (another 1e-4); bf16 rounds states to 3 significant digits.
TOLERANCE = {torch.float32: 2e-4, torch.bfloat16: 2e-2}


def test_batched_analysis_matches_each_text_alone(engine: Engine) -> None:
    documents = dict(engine.analyze(TEXTS * 3, batch_size=5))
    assert sorted(documents) == list(range(len(TEXTS) * 3))
    worst = 0.0
    for i, text in enumerate(TEXTS * 3):
        alone = analyze_text(engine.model, engine.tokenizer, engine.monitor, text)
        batched = documents[i]["records"]
        assert [r.token for r in batched] == [r.token for r in alone]
        assert [r.index for r in batched] == list(range(len(alone)))
        for b, a in zip(batched, alone):
            same = {c.concept: c.activation for c in a.concepts}
            worst = max([worst] + [abs(c.activation - same[c.concept]) for c in b.concepts if c.concept in same])
    assert worst <= TOLERANCE[engine.loaded.dtype], worst
    # per-text statistics over the padded batch == those of the text analysed on its own
    alone = dict(engine.analyze([TEXTS[2]], concepts=["Fear", "Music"]))[0]["concepts"]
    batched = dict(engine.analyze(TEXTS, concepts=["Fear", "Music"]))[2]["concepts"]
    for a, b in zip(alone, batched):
        assert a["concept"] == b["concept"] and a["max_activation"] >= a["mean_activation"]
        assert all(abs(a[k] - b[k]) <= TOLERANCE[engine.loaded.dtype] for k in a if k not in ("concept", "layer"))


def test_analyze_api_takes_a_list_of_texts_in_order(server: str) -> None:
    answer = httpx.post(f"{server}/v1/analyze", json={"input": TEXTS, "top_k": 2}, timeout=120)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    single = httpx.post(f"{server}/v1/analyze", json={"text": TEXTS[1], "top_k": 2}, timeout=60).json()
    assert [t["token"] for t in body["data"][1]["tokens"]] == [t["token"] for t in single["tokens"]]
    assert body["usage"]["prompt_tokens"] == sum(d["usage"]["prompt_tokens"] for d in body["data"])
    for bad in ({"input": ["ok"] * 257}, {"input": []}, {"text": "a", "input": ["b"]}, {}, {"input": ["ok", ""]}):
        response = httpx.post(f"{server}/v1/analyze", json=bad, timeout=60)
        assert response.status_code == 400, (bad if len(str(bad)) < 80 else "257 texts", response.text)
        assert response.json()["error"]["message"]


def test_analyze_cli_writes_one_parquet_row_per_text(small_probe_pack: Path, tmp_path: Path) -> None:
    source = tmp_path / "texts.jsonl"
    source.write_text(json.dumps({"id": "a", "text": TEXTS[0]}) + "\n" + json.dumps(TEXTS[1]) + "\n")
    out = tmp_path / "scores.parquet"
    env = {**os.environ, "HATCAT_PROBE_PACK": str(small_probe_pack)}
    run = subprocess.run(
        [sys.executable, "-m", "hatcat.analyze", str(source), "--out", str(out), "--top-k", "3"],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    rows = pq.read_table(out).to_pylist()
    assert [r["id"] for r in rows] == ["a", "2"]
    assert all(len(r["tokens"]) == r["n_tokens"] == len(r["token_max_divergence"]) > 0 for r in rows)
    assert all(len(r["concepts"]) == 3 for r in rows)
    assert "analysing" in run.stderr  # the progress bar


@pytest.mark.parametrize(
    "content, words",
    [("not json\n", "not JSON"), ('{"txt": "x"}\n', "text"), ("", "no texts")],
)
def test_analyze_cli_refuses_bad_input_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, words: str
) -> None:
    source = tmp_path / "texts.jsonl"
    source.write_text(content)
    code, err = run_main(analyze_main, [str(source), "--out", str(tmp_path / "o.parquet")], capsys)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err


def test_the_analyze_command_exits_2_on_bad_input(tmp_path: Path) -> None:
    source = tmp_path / "texts.jsonl"
    source.write_text("not json\n")
    run = subprocess.run(
        [sys.executable, "-m", "hatcat.analyze", str(source), "--out", str(tmp_path / "o.parquet")],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "not JSON" in run.stderr, run.stderr
