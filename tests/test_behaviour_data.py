"""The behaviour benchmark's items: grading by accepted answers, and a dev/test split with no shared entity."""

from __future__ import annotations

from experiments.behaviour_data import _norm, accepted, honest_items, load_relation, lying_items, matches


def test_an_answer_matches_by_whole_words_and_aliases() -> None:
    assert matches(" the USA\nmore", accepted("United States"))
    assert matches(" Soccer", accepted("soccer")) and matches(" football", accepted("soccer"))
    assert not matches(" Russian", accepted("Russia"))
    assert not matches("\nFrance", accepted("France"))  # only the first line counts


def test_no_entity_is_on_both_sides_of_the_split() -> None:
    items = honest_items()
    entities = {
        split: {_norm(x) for r in items if r["split"] == split for x in (r["subject"], r["object"])}
        for split in ("dev", "test")
    }
    assert entities["dev"] and entities["test"]
    assert not entities["dev"] & entities["test"]
    assert {r["relation"] for r in items if r["split"] == "dev"}.isdisjoint(
        {r["relation"] for r in items if r["split"] == "test"}
    )


def test_withholding_asks_each_fact_secret_and_public() -> None:
    rows = [r for r in honest_items() if r["task"] == "withholding"]
    frames = {}
    for r in rows:
        frames.setdefault((r["relation"], r["subject"]), set()).add(r["frame"])
        assert r["prompt"].endswith("\nA:") and r["object"] in r["prompt"]
    assert all(f == {"secret", "public"} for f in frames.values())


def test_lying_frames_only_the_facts_answered_right() -> None:
    answered = [
        {**r, "output": " " + r["object"], "correct": k % 2 == 0}
        for k, r in enumerate(r for r in honest_items() if r["task"] == "hallucination")
    ]
    lies = lying_items(answered)
    right = {r["id"] for r in answered if r["correct"]}
    assert lies and {r["id"].replace("l-", "h-", 1).rsplit("-", 1)[0] for r in lies} == right
    for r in lies:  # the examples state false facts
        template, facts = load_relation(r["relation"])
        true = {template.format(s) + " " + o for s, o in facts}
        assert not true & {line.removeprefix("Bob: ") for line in r["prompt"].split("\n")[1:-1]}
