"""The in-distribution probe's cross-validation split (experiments/probe_ceiling.py), on the real dev scenes (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.probe_ceiling import cv_log_posteriors, text_folds, text_splits
from experiments.recipe_data import dev_scenes


@pytest.mark.parametrize("k", [None, 1, 3, 5])
def test_no_dev_scene_is_in_both_the_training_and_the_held_out_part_of_a_fold(k: int | None) -> None:
    scenes = dev_scenes()
    texts = np.array([t for ts in scenes.values() for t in ts])
    owner = np.array([c for c, ts in scenes.items() for _ in ts])
    splits = text_splits(text_folds(scenes), k)
    assert sorted(np.concatenate([test for _, test in splits]).tolist()) == list(range(len(texts)))  # each once
    for train, test in splits:
        assert not set(texts[train]) & set(texts[test])
        assert set(owner[test]) == set(scenes) and len(test) == len(scenes)  # one held-out scene per concept
        per_concept = np.unique(owner[train], return_counts=True)[1]
        assert len(per_concept) == len(scenes) and set(per_concept) == {k or 5}  # k (else all 5 others) each


def test_a_repeated_text_keeps_the_fold_of_its_first_occurrence() -> None:
    folds = text_folds({"A": ["x", "y", "z"], "B": ["u", "x", "v"]})
    assert folds.tolist() == [0, 1, 2, 0, 0, 2]


def test_held_out_scores_cannot_see_their_own_text() -> None:
    # each class has one outlying text far from its others: only a probe that saw it could place it
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 4
    x = np.repeat(centres, 4, axis=0) + rng.normal(size=(12, 8)) * 0.1
    label = np.repeat(np.arange(3), 4)
    x[[3, 7, 11]] = centres[[1, 2, 0]]  # the last text of each class sits on another class's centre
    folds = np.tile(np.arange(4), 3)
    s = cv_log_posteriors(x, label, folds, "lda")
    assert (s.argmax(1)[[3, 7, 11]] == [1, 2, 0]).all()
    assert (s.argmax(1)[folds < 3] == label[folds < 3]).all()
