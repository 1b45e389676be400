"""The in-distribution probe's cross-validation split (experiments/probe_ceiling.py), on the real dev scenes (no model)."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import PredefinedSplit

from experiments.probe_ceiling import cv_log_posteriors, text_folds
from experiments.recipe_data import dev_scenes


def test_no_dev_scene_is_in_both_the_training_and_the_held_out_part_of_a_fold() -> None:
    scenes = dev_scenes()
    texts = np.array([t for ts in scenes.values() for t in ts])
    owner = np.array([c for c, ts in scenes.items() for _ in ts])
    for train, test in PredefinedSplit(text_folds(scenes)).split(texts):
        assert not set(texts[train]) & set(texts[test])
        assert set(owner[train]) == set(scenes)  # every concept still has training scenes
        assert len(set(owner[test])) == len(owner[test])  # one held-out scene per concept


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
