"""Concept evidence without the model: the corpus sources' parsers and split, the scan's batched statistics,
the family-wise calibration and its use by the probe bank and monitor, quality cards."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hatcat.concepts import load_pack
from hatcat.evidence import calibration, stored
from hatcat.evidence.card import card
from hatcat.evidence.reference import split_documents
from hatcat.evidence.scan import HIST_BINS, SAMPLE_R, TOP_K, WINDOW, ScanState, update
from hatcat.evidence.sources import sgd, stackexchange, wikitext
from hatcat.monitor import Monitor
from hatcat.paths import SAFETY_MELD
from hatcat.probes import ProbeBank, ProbePack
from hatcat.ranking import rankable
from tests.support import tiny_probe_pack


def test_sources_become_documents_with_their_text_restored() -> None:
    wiki = " \n = Lobster = \n \n The lobster @-@ like animal 's claws are big . A <unk> sentence goes . \n \n = Crab = \n \n It walks sideways . \n"
    assert list(wikitext("w", wiki)) == [
        ("w#Lobster", "The lobster-like animal's claws are big."),
        ("w#Crab", "It walks sideways."),
    ]
    dialogue = json.dumps(
        [
            {
                "dialogue_id": "1_0",
                "turns": [{"speaker": "USER", "utterance": "Hi"}, {"speaker": "SYSTEM", "utterance": "Hello"}],
            }
        ]
    )
    assert list(sgd("d", dialogue)) == [("d#1_0", "User: Hi\nSystem: Hello")]
    posts = (
        '<posts><row Id="1" PostTypeId="1" Title="Hops?" Body="&lt;p&gt;What are hops?&lt;/p&gt;" />'
        '<row Id="2" PostTypeId="2" ParentId="1" Body="&lt;p&gt;Flowers &amp;amp; more.&lt;/p&gt;&lt;pre&gt;code&lt;/pre&gt;" /></posts>'
    )
    assert list(stackexchange("f", posts)) == [("f#1", "Hops?\nWhat are hops?\n\nFlowers & more.")]


def test_every_register_keeps_documents_in_both_parts_and_most_tokens_in_dev() -> None:
    docs = [{"id": f"{r}{i}", "register": r, "tokens": 10} for r in ("a", "b") for i in range(10)]
    split_documents(docs)
    for register in ("a", "b"):
        parts = [d["split"] for d in docs if d["register"] == register]
        assert parts.count("dev") == 7 and parts.count("test") == 3


def _batch(logits: list[list[list[float]]], lengths: list[int], splits: list[int], first: list[int]):
    t = torch.tensor(logits)
    real = torch.arange(t.shape[1])[None, :] < torch.tensor(lengths)[:, None]
    return t, real, torch.tensor(first) * WINDOW, torch.tensor(splits)


def test_a_scan_keeps_each_concepts_strongest_windows_and_samples_only_its_firings() -> None:
    state = ScanState.empty(2)
    # two windows of 3 positions (the second has 2 real tokens), two concepts; concept 1 fires (>= 0) twice
    logits, real, first, split = _batch(
        [[[1.0, -5.0], [3.0, 0.5], [2.0, -4.0]], [[0.0, 2.0], [9.0, -1.0], [99.0, 99.0]]], [3, 2], [0, 2], [0, 1]
    )
    update(state, logits, real, first, split, torch.tensor([100.0, 0.0]), torch.Generator().manual_seed(0))
    assert state.top_val[:2, 0].tolist() == [9.0, 3.0]  # padding (99) never counts
    assert state.top_tok[:2, 0].tolist() == [WINDOW + 1, 1]
    sampled = set(state.sample_tok[:, 1][state.sample_key[:, 1] < 2].tolist())
    assert sampled == {1, WINDOW}  # the two firings of concept 1, nothing else
    assert (state.sample_key[:, 0] == 2.0).all()  # concept 0 never reached its threshold
    assert state.tokens.tolist() == [3, 0, 2] and state.fired.tolist() == [[0, 1], [0, 0], [0, 1]]
    assert state.hist.sum(2).tolist() == [[3, 3], [0, 0], [2, 2]]
    assert torch.isclose(state.sum[0, 0], torch.tensor(6.0, dtype=torch.float64))


def test_two_scans_merged_equal_one_scan_of_both() -> None:
    gen = torch.Generator().manual_seed(1)
    batches = [
        _batch(torch.randn(4, 5, 3, generator=gen).tolist(), [5, 4, 3, 5], [0, 1, 2, 0], [4 * i + j for j in range(4)])
        for i in range(2)
    ]
    cap = torch.zeros(3)
    whole, parts = ScanState.empty(3), [ScanState.empty(3), ScanState.empty(3)]
    for part, batch in zip(parts, batches):
        update(whole, *batch, cap, torch.Generator().manual_seed(2))
        update(part, *batch, cap, torch.Generator().manual_seed(2))
    merged = parts[0].merge(parts[1])
    assert torch.equal(merged.top_val, whole.top_val) and torch.equal(merged.hist, whole.hist)
    assert torch.equal(merged.fired, whole.fired) and merged.top_val.shape == (TOP_K, 3)
    held = merged.sample_key < 2
    assert held.sum(0).tolist() == torch.minimum(whole.fired.sum(0), torch.tensor(SAMPLE_R)).tolist()


def test_family_wise_thresholds_are_chosen_on_the_dev_folds_and_hold_the_bound_there() -> None:
    gen = torch.Generator().manual_seed(3)
    n, tokens = 40, 30_000
    state = ScanState.empty(n)
    spread = torch.linspace(0.5, 3, n)  # some concepts reach high logits far more often
    for part in range(3):
        values = torch.randn(tokens, n, generator=gen) * spread
        update(state, values[None], torch.ones(1, tokens, dtype=torch.bool), torch.zeros(1, dtype=torch.long),
               torch.tensor([part]), torch.full((n,), 1e9), torch.Generator())  # fmt: skip
    concepts = [f"C{i}" for i in range(n - 1)] + ["Deception"]
    cap = torch.full((n,), -100.0)
    tensors, chosen = calibration.calibrate(state, concepts, cap, torch.zeros(n, 2), state.hist[0])
    ranked = rankable(concepts)
    assert not ranked[-1] and ranked[:-1].all()
    assert {f"{side}_{f}" for side in ("act", "words") for f in ("u", "nlp", "beta", "nls")} <= set(tensors)
    assert chosen["budget"] in calibration.BUDGETS and len(chosen["tried_on_dev"]) == len(calibration.BUDGETS) * len(
        calibration.TAILS
    )
    kept = next(t for t in chosen["tried_on_dev"] if (t["budget"], t["tail"]) == (chosen["budget"], chosen["tail"]))
    assert max(kept["cross_fit"]) <= calibration.MARGIN * calibration.BOUND
    held_out = calibration.expected_firings(state.hist[2], tokens, tensors["fire_logit"], ranked)
    assert held_out <= calibration.BOUND  # Gaussian logits: the fitted tail holds on a fresh part
    stricter = calibration.thresholds(state.hist[0], ranked, cap, 0.01, 0.99)
    looser = calibration.thresholds(state.hist[0], ranked, cap, 0.08, 0.99)
    assert (stricter[:-1] >= looser[:-1]).all() and state.hist.shape[2] == HIST_BINS


def test_a_calibrated_bank_fires_on_its_corpus_thresholds_only_for_unchanged_rows(tmp_path: Path) -> None:
    folder = tiny_probe_pack(tmp_path / "pack")
    bank = ProbeBank(ProbePack.load(folder))
    assert bank.calibrated == 0
    prints = stored.fingerprint(bank.act_weight, bank.act_bias)
    prints[2, 1] += 1.0  # Fear's probe was retrained since the scan
    table = calibration.surprisal(torch.zeros(3, HIST_BINS, dtype=torch.int64).index_fill_(1, torch.tensor([80]), 100))
    tensors = {
        "fire_logit": torch.tensor([4.0, 0.0, 4.0]),
        "fingerprint": prints,
        **{f"{side}_{k}": v.clone() for side in ("act", "words") for k, v in table.items()},
    }
    stored.write(folder, tensors, {"concepts": bank.concepts})  # as `python -m hatcat.corpus evidence` does
    calibrated = ProbeBank(ProbePack.load(folder))
    assert calibrated.calibrated == 2  # Music and Deception
    assert torch.isclose(calibrated.act_threshold[0], torch.sigmoid(torch.tensor(4.0)))
    assert calibrated.act_threshold[2] == bank.act_threshold[2]  # Fear keeps the pack's threshold
    # every ordinary logit of Music sat in one bin at 0: a logit of 5 is far rarer than that; Fear keeps its logit
    score = calibrated.rank_score(torch.sigmoid(torch.tensor([[5.0, 9.0, 1.0]])), torch.full((1, 3), 0.5))
    assert score[0, 0] > 10 and score[0, 1] == float("-inf") and torch.isclose(score[0, 2], torch.tensor(1.0))
    monitor = Monitor(calibrated, load_pack(melds=[SAFETY_MELD]))
    act = torch.sigmoid(torch.tensor([[5.0, 9.0, 3.0], [3.0, 9.0, 0.2]]))
    records = monitor.records(act, torch.full_like(act, 0.5), torch.zeros_like(act), ["a", "b"], [0, 1])
    # Music (calibrated, far past its ordinary range) outranks Fear (uncalibrated: its logit, 3); nothing fires on "b"
    assert [[c.concept for c in r.concepts] for r in records] == [["Music", "Fear"], []]


def test_a_quality_card_grades_what_was_measured() -> None:
    good = {"auroc": 0.99, "control_fpr_test": 0.001, "control_fpr_dev": 0.001}
    assert card(good, {"firing_rate": 0.0005})["grade"] == "A"
    assert card(good, None)["grade"] == "B"  # two measurements only
    noisy = card({"auroc": 0.6, "control_fpr_test": 0.05}, {"firing_rate": 0.3})
    assert noisy["grade"] == "D" and noisy["levels"] == {
        "template_auroc": "poor",
        "control_fpr_test": "poor",
        "corpus_firing_rate": "poor",
    }
    assert card({"control_fpr_test": 0.01}, {"firing_rate": 0.05})["grade"] == "C"
