"""The one concept ranking without the model: surprisals on one scale, the response-level score, the
hierarchy rule (a child outranks its parent only with its own evidence), and behaviour rows kept out."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hatcat.concepts import load_pack
from hatcat.evidence.calibration import surprisal
from hatcat.evidence.scan import HIST_BINS, HIST_HI, HIST_LO
from hatcat.monitor import Monitor, summarise
from hatcat.paths import SAFETY_MELD
from hatcat.probes import ProbeBank, ProbePack
from hatcat.ranking import OWN_EVIDENCE, Surprisal, own_evidence, response_level, top2, top2_update
from tests.support import tiny_probe_pack


def _histogram(values: torch.Tensor) -> torch.Tensor:
    """[N, BINS] as the corpus scan bins [tokens, N] logits."""
    bins = ((values - HIST_LO) * HIST_BINS / (HIST_HI - HIST_LO)).clamp(0, HIST_BINS - 1).long()
    return torch.stack([torch.bincount(b, minlength=HIST_BINS) for b in bins.T])


def test_surprisal_puts_a_narrow_and_a_wide_probe_on_one_scale() -> None:
    gen = torch.Generator().manual_seed(0)
    ordinary = torch.randn(200_000, 2, generator=gen) * torch.tensor([0.5, 4.0])  # one narrow, one wide probe
    s = Surprisal(**surprisal(_histogram(ordinary)))
    # the same rarity (the 99.9% quantile of each) scores about the same, whatever the logit range
    rare = ordinary.quantile(0.999, dim=0)
    scored = s(rare[None])[0]
    assert torch.allclose(scored, torch.full((2,), -torch.log(torch.tensor(0.001))), atol=0.35)
    # a raw logit of 2 is extreme for the narrow probe and ordinary for the wide one
    at_two = s(torch.tensor([[2.0, 2.0]]))[0]
    assert at_two[0] > 8 and at_two[1] < 1.5
    grid = torch.linspace(-10, 20, 301)[:, None].expand(-1, 2)
    assert (s(grid).diff(dim=0) >= -1e-3).all()  # more evidence never scores lower


def test_an_uncalibrated_row_ranks_by_its_activation_logit_alone() -> None:
    logits = torch.tensor([[-3.1, -3.02, 0.5, 3.0, 12.0]])
    assert torch.allclose(Surprisal.identity(5, "cpu")(logits), logits, atol=1e-5)  # close logits stay apart
    assert torch.equal(Surprisal.identity(5, "cpu", slope=0.0)(logits), torch.zeros(1, 5))  # the words side


def test_a_stream_and_a_whole_text_get_the_same_response_level_score() -> None:
    scores = torch.tensor([[1.0, 5.0], [4.0, -1.0], [2.0, 0.0]])  # 3 tokens, 2 concepts
    best = None
    for token in scores:
        best = top2_update(best, token)
    whole = response_level(top2(scores[None]))[0]
    assert torch.equal(response_level(best), whole) and whole.tolist() == [3.0, 2.5]  # two highest, averaged
    one = torch.tensor([[7.0, 1.0]])
    assert response_level(top2_update(None, one[0])).tolist() == [7.0, 1.0]  # one token: its own score
    padded = torch.stack([torch.cat([one, torch.full((2, 2), float("-inf"))]), scores])
    assert response_level(top2(padded)).tolist() == [[7.0, 1.0], [3.0, 2.5]]


def test_a_child_outranks_its_parent_only_with_its_own_evidence() -> None:
    # concepts: 0 parent, 1 and 2 its children, 3 a root; edges (child, parent)
    edges = torch.tensor([1, 2]), torch.tensor([0, 0])
    close = torch.tensor([[5.0, 5.0 + OWN_EVIDENCE / 2, 5.0 + OWN_EVIDENCE / 4, 4.0]])
    ranked = own_evidence(close, edges)
    assert ranked[0].argsort(descending=True).tolist() == [0, 1, 2, 3]  # parent first, children keep their order
    assert (ranked[0, 1:3] > 4.99).all()  # just below the parent, still above the rest
    clear = torch.tensor([[5.0, 5.0 + OWN_EVIDENCE * 2, 1.0, 4.0]])
    assert torch.equal(own_evidence(clear, edges), clear)  # enough evidence, or below the parent: unchanged
    batched = own_evidence(torch.stack([close, clear]), edges)
    assert torch.equal(batched[0], ranked) and torch.equal(batched[1], clear)


def test_behaviour_rows_leave_every_concept_ranking(tmp_path: Path) -> None:
    bank = ProbeBank(ProbePack.load(tiny_probe_pack(tmp_path / "pack")))  # Music, Deception, Fear; no calibration
    assert bank.calibrated == 0 and bank.rankable.tolist() == [True, False, True]
    monitor = Monitor(bank, load_pack(melds=[SAFETY_MELD]))
    act = torch.sigmoid(torch.tensor([[2.0, 9.0, 1.0], [1.5, 9.0, 3.0]]))  # Deception highest on both tokens
    text = torch.full_like(act, 0.5)
    rank = bank.rank_score(act, text)
    assert (rank[:, 1] == float("-inf")).all()
    records = monitor.records(act, text, torch.zeros_like(act), ["a", "b"], [0, 1])
    assert [[c.concept for c in r.concepts] for r in records] == [["Music", "Fear"], ["Fear", "Music"]]
    top = monitor.top_concepts(top2(rank[None]))[0]
    assert [c for c, _ in top] == ["Fear", "Music"]  # Fear: (1 + 3) / 2 = 2 over Music's 1.75
    summary = summarise(records, top)
    assert [(c.concept, c.tokens, c.score) for c in summary.top_concepts] == [("Fear", 2, 2.0), ("Music", 2, 1.75)]


def test_behaviour_rows_are_reported_as_behaviours_against_their_threshold(tmp_path: Path) -> None:
    bank = ProbeBank(ProbePack.load(tiny_probe_pack(tmp_path / "pack")))  # Music, Deception, Fear
    monitor = Monitor(bank, load_pack(melds=[SAFETY_MELD]))
    assert monitor.behaviour_names == ("Deception",)
    threshold = round(float(bank.pack_threshold[1]), 4)  # no measured threshold in this pack's manifest
    assert bank.behaviour_threshold == (float(bank.pack_threshold[1]),)
    below, above = (
        monitor.row_behaviours(torch.tensor([threshold - 0.01])),
        monitor.row_behaviours(torch.tensor([0.99])),
    )
    assert below == {"Deception": {"score": round(threshold - 0.01, 4), "threshold": threshold, "fired": False}}
    assert above["Deception"]["fired"] and above["Deception"]["score"] == 0.99
    manifest = json.loads((tmp_path / "pack" / "manifest.json").read_text())
    (tmp_path / "pack" / "manifest.json").write_text(
        json.dumps({**manifest, "behaviour_rows": {"Deception": {"threshold": 0.3}}})
    )
    assert ProbeBank(ProbePack.load(tmp_path / "pack")).behaviour_threshold == (0.3,)  # measured: the manifest's
