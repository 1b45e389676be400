"""Concept dashboards end to end on the real model: a small corpus scanned with a probe pack trained here,
its dashboards and calibration written beside a copy of the pack, served by the real app on loopback."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from hatcat.engine import Engine
from hatcat.evidence import calibration, dashboards, stored, words
from hatcat.evidence.scan import ScanState, Windows, scan
from hatcat.probes import ProbeBank, ProbePack
from tests.support import start_app, stop_app

pytestmark = pytest.mark.slow

DOCS = [  # a few lines in the registers of the reference corpus, half of them held out
    ("dev", "The band played loud music all night, and the drummer's song filled the hall with rhythm."),
    ("dev", "She was afraid of the dark; fear gripped her as the door creaked open behind her."),
    ("dev", "User: I need a car for Friday.\nSystem: I found a compact automobile at the airport."),
    ("test", "He lied to the committee about the money, a deliberate deception that cost him his job."),
    ("test", "Anger rose in him when the referee ignored the foul; he shouted at the crowd."),
    ("test", "The orchestra's symphony was the finest music the old critic had heard in years."),
]


@pytest.fixture(scope="module")
def evidence_server(
    engine: Engine, small_probe_pack: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("evidence") / "pack"
    shutil.copytree(small_probe_pack, folder)
    bank = ProbeBank(ProbePack.load(folder))
    docs = [{"id": f"doc{i}", "split": s, "text": t} for i, (s, t) in enumerate(DOCS)]
    windows = Windows.cut(docs, engine.tokenizer)
    state = scan(
        engine.model, bank, windows, np.arange(len(windows.lengths)), ScanState.empty(len(bank)), None, batch=4
    )
    dashboards.write(folder, dashboards.rows(state, windows, docs, engine.tokenizer, bank.concepts))
    prints = stored.fingerprint(bank.act_weight, bank.act_bias)
    words_hist = words.histogram(engine.model.get_input_embeddings(), bank, windows)
    tensors, chosen = calibration.calibrate(state, bank.concepts, bank.act_cap, prints, words_hist)
    stored.write(folder, tensors, {"concepts": bank.concepts, "calibration": chosen})
    log = tmp_path_factory.mktemp("evidence-app") / "app.log"
    proc, base = start_app({"HATCAT_PROBE_PACK": str(folder), "HATCAT_DB": str(log.parent / "hatcat.db")}, log)
    try:
        yield base, folder
    finally:
        stop_app(proc)


def test_a_concepts_page_serves_its_corpus_contexts_firing_rate_and_quality_card(evidence_server) -> None:
    base, _ = evidence_server
    pack_id = httpx.get(f"{base}/v1/concept-packs").json()["data"][0]["id"]
    page = httpx.get(f"{base}/v1/concept-packs/{pack_id}/concepts/Music").json()
    assert page["parents"] and page["definition"] and 0 <= page["firing_rate"] <= 1
    top = page["examples"]["top"]
    assert len(top) == len(DOCS)  # one window per document, its strongest token
    texts = [t for _, t in DOCS]
    for context in top:  # the marked token sits in the text it came from, with its neighbours
        assert any(context["left"] + context["token"] + context["right"] in t for t in texts)
    assert top == sorted(top, key=lambda c: -c["logit"])
    assert page["quality"]["grade"] in "ABCD" and "corpus_firing_rate" in page["quality"]["levels"]
    for context in page["examples"]["random"]:
        assert context["doc"].startswith("doc")


def test_an_unknown_concept_or_pack_is_404_with_the_reason(evidence_server) -> None:
    base, _ = evidence_server
    pack_id = httpx.get(f"{base}/v1/concept-packs").json()["data"][0]["id"]
    missing = httpx.get(f"{base}/v1/concept-packs/{pack_id}/concepts/NoSuchThing")
    assert missing.status_code == 404 and "NoSuchThing" in missing.json()["error"]["message"]
    assert httpx.get(f"{base}/v1/concept-packs/nope/concepts/Music").status_code == 404


def test_the_served_monitor_reports_only_concepts_past_their_family_wise_thresholds(evidence_server) -> None:
    base, folder = evidence_server
    bank = ProbeBank(ProbePack.load(folder))
    assert bank.calibrated == len(bank)
    answer = httpx.post(f"{base}/v1/analyze", json={"text": "The drummer played music."}, timeout=300).json()
    fire = dict(zip(bank.concepts, bank.act_threshold.tolist()))
    for token in answer["tokens"]:
        for c in token["divergence"]["top_divergences"]:
            assert c["activation"] >= fire[c["concept"]] - 1e-4 and c["concept"] != "Deception"
    top = answer["summary"]["top_concepts"]  # the response-level ranking: every concept but the behaviour row
    assert len(top) == len(bank) - 1 and "Deception" not in {c["concept"] for c in top}
    assert [c["score"] for c in top] == sorted((c["score"] for c in top), reverse=True)
