"""Thresholds panel: real-text numbers first, then template score distributions, ROC/PR, a threshold
slider, and named threshold profiles.

The primary view is what a threshold means on real text, from the pack's metrics.json: the
false-positive rate on held-out control-corpus tokens (ordinary text) and the recall on natural
positives, at the pack's threshold (set for 1% control FPR) and, interpolated from the stored
control-score quantiles, at the slider's value. Template prompts are a secondary view.

Applying a threshold changes the engine's one monitor, so the API serves with it too (admin).
Profiles (the monitor's overrides plus the slider's concept) live in the record store, owned
by the researcher who saved them.
"""

from __future__ import annotations

import re

import gradio as gr
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from sklearn.metrics import precision_recall_curve, roc_curve

from hatcat.access import Role
from hatcat.engine import Engine
from hatcat.errors import HatCatError
from hatcat.store import ProfileOwned, Store, StoreWriteError
from hatcat.training.fit import at_threshold, auroc
from views import trace as tr
from views.access import audit, current_actor, current_user, guard
from views.common import require_probes, user_error
from views.evidence import card_markdown
from views.review import reviewed_line


def control_fpr_at(metrics: dict, threshold: float) -> float | None:
    """Control-corpus FPR at `threshold`, interpolated (log FPR) between the stored quantiles;
    None below the lowest stored one (the FPR is then above the largest stored level)."""
    levels = sorted((float(v), float(k)) for k, v in metrics.get("control_quantiles", {}).items())
    if not levels or threshold < levels[0][0]:
        return None
    scores, log_fpr = [s for s, _ in levels], [np.log(f) for _, f in levels]
    return float(np.exp(np.interp(threshold, scores, log_fpr)))


def real_text_summary(metrics: dict, threshold: float) -> str:
    """Markdown: the concept's control-corpus FPR and natural recall (the primary view)."""
    if "control_fpr_test" not in metrics:
        return "This pack has no control-corpus numbers (trained before thresholds came from real text)."
    fpr = control_fpr_at(metrics, threshold)
    at = f"above {max(map(float, metrics['control_quantiles'])):.0%}" if fpr is None else f"{fpr:.2%}"
    recall = (
        f"natural recall **{metrics['natural_recall']:.2f}** on {metrics['n_natural']} texts that others wrote"
        if "natural_recall" in metrics
        else "no natural positives for this concept in the repository"
    )
    return (
        f"**Real text** · pack threshold {metrics['threshold']:.3f} (set to hold 1% FPR on unseen control-corpus sources): "
        f"held-out control FPR **{metrics['control_fpr_test']:.2%}**, {recall}. "
        f"At the slider's {threshold:.3f}: control FPR ≈ **{at}**."
    )


def curves_figure(concept: str, scores: list[float], labels: list[int], threshold: float) -> go.Figure:
    """Score histograms per class, ROC and precision-recall, each with the threshold's operating point."""
    s, y = np.asarray(scores), np.asarray(labels)
    fpr, tpr, _ = roc_curve(y, s)
    precision, recall, _ = precision_recall_curve(y, s)
    point = at_threshold(s, y, threshold)
    fig = make_subplots(
        1, 3, subplot_titles=("scores (val prompts)", f"ROC (AUROC {auroc(s, y):.3f})", "precision / recall")
    )
    fig.add_histogram(
        x=s[y == 1], name="positives", nbinsx=20, opacity=0.7, row=1, col=1, xbins={"start": 0, "end": 1, "size": 0.05}
    )
    fig.add_histogram(
        x=s[y == 0], name="negatives", nbinsx=20, opacity=0.7, row=1, col=1, xbins={"start": 0, "end": 1, "size": 0.05}
    )
    fig.add_vline(x=threshold, line_dash="dot", row=1, col=1)
    fig.add_scatter(x=fpr, y=tpr, mode="lines", name="ROC", row=1, col=2)
    fig.add_scatter(
        x=[point["fpr"]], y=[point["recall"]], mode="markers", marker={"size": 12}, name="threshold", row=1, col=2
    )
    fig.add_scatter(x=recall, y=precision, mode="lines", name="PR", row=1, col=3)
    fig.add_scatter(
        x=[point["recall"]],
        y=[point["precision"]],
        mode="markers",
        marker={"size": 12},
        name="threshold ",
        row=1,
        col=3,
    )
    fig.update_layout(barmode="overlay", height=340, margin={"l": 30, "r": 10, "t": 40, "b": 30}, title=concept)
    return fig


def saved_profiles(engine: Engine) -> list[str]:
    return [p["name"] for p in engine.records.profiles()] if engine.records else []


def _store(engine: Engine) -> Store:
    if engine.records is None:
        raise gr.Error("This workbench runs without a record store (profiles live there).", print_exception=False)
    return engine.records


def save_profile(engine: Engine, name: str, thresholds: dict[str, float]) -> str:
    """Save `thresholds` as a profile owned by the current user (only its owner or an admin may replace it)."""
    require_probes(engine)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name or ""):
        raise gr.Error("A profile name is 1-64 letters, digits, '.', '_' or '-'.", print_exception=False)
    user = current_user()
    try:
        _store(engine).save_profile(
            name, current_actor(), engine.probe_pack_id, thresholds, admin=user is None or user.role >= Role.admin
        )
    except (ProfileOwned, StoreWriteError) as err:
        raise user_error(err) from None
    return f"Saved profile **{name}** ({len(thresholds)} thresholds) as {current_actor()}."


def load_profile(engine: Engine, name: str) -> str:
    """Reset to the pack's thresholds, then apply the profile's (unknown concepts are skipped, and said)."""
    require_probes(engine)
    profile = _store(engine).profile(name or "")
    if profile is None:
        raise gr.Error(f"No profile {name!r}.", print_exception=False)
    audit(engine, "thresholds_applied", name, probe_pack=engine.probe_pack_id)
    skipped = engine.apply_thresholds(profile["thresholds"], reset=True)
    applied = len(profile["thresholds"]) - len(skipped)
    return f"Loaded profile **{name}**: {applied} thresholds applied to the monitor (the API uses them too)." + (
        f" Skipped (not in this pack): {', '.join(skipped)}." if skipped else ""
    )


def build(engine: Engine, trace: gr.State) -> tuple:
    scores = gr.State({})  # {concept: [scores, labels]}
    with gr.Row():
        concept = gr.Dropdown([], label="concept", scale=3)
        split = gr.Radio(["val", "test"], value="val", label="template prompts", scale=1)
        load = gr.Button("load template scores", scale=1)
    threshold = gr.Slider(0, 1, value=0.5, step=0.001, label="threshold")
    stats = gr.Markdown()
    curves = gr.Plot(elem_id="thresholds-plot")
    highlights = gr.HTML(tr.heatmap_html([]))
    with gr.Row():
        apply = gr.Button("apply to the monitor", variant="primary")
        name = gr.Textbox(label="profile name", placeholder="strict-deception", scale=2)
        save_btn = gr.Button("save profile")
        profiles = gr.Dropdown(saved_profiles(engine), label="saved profiles", scale=2)
        load_p = gr.Button("load profile")
    status = gr.Markdown()

    def show(c: str, t: float, cache: dict, records: list[dict]):
        metrics = engine.probe_metrics()
        real = real_text_summary(metrics.get("per_concept", {}).get(c, {}), t) if c and metrics else ""
        real = "\n\n".join(
            x for x in (card_markdown(engine.concept_evidence(c).get("quality", {})) if c else "", real) if x
        )
        reviewed = reviewed_line(engine, c, t)
        head = "\n\n".join(x for x in (real, reviewed) if x)
        if not c or c not in cache:
            return head, None, tr.heatmap_html(records or [], c or tr.BY_DIVERGENCE, t)
        s, y = cache[c]
        m = at_threshold(s, y, t)
        md = (
            real
            + "\n\n"
            + (
                f"Template prompts (secondary view) at **{t:.2f}**: precision **{m['precision']:.3f}**, recall **{m['recall']:.3f}**, F1 {m['f1']:.3f}, "
                f"FPR {m['fpr']:.3f} on {sum(y)} positive / {len(y) - sum(y)} negative prompts · monitor now uses {engine.threshold(c)}"
            )
        )
        return (
            md + (f"\n\n{reviewed}" if reviewed else ""),
            curves_figure(c, s, y, t),
            tr.heatmap_html(records or [], c, t),
        )

    def compute(c: str, which: str, cache: dict, records: list[dict], progress=gr.Progress()):
        require_probes(engine)
        if not c:
            raise gr.Error("Pick a concept.", print_exception=False)
        progress(0.1, desc=f"scoring {c}'s {which} prompts (one forward each)")
        try:
            s, y = engine.held_out_scores(c, which)
        except (KeyError, ValueError, HatCatError) as err:
            raise user_error(err) from None
        cache = {**cache, c: [s, y]}
        t = engine.threshold(c)
        return cache, t, *show(c, t, cache, records)

    @guard(engine, Role.admin, "setting the monitor's thresholds")
    def apply_now(c: str, t: float):
        require_probes(engine)
        if c not in engine.probe_concepts():
            raise gr.Error("Pick a concept of the loaded pack.", print_exception=False)
        audit(engine, "threshold_set", c, threshold=t, probe_pack=engine.probe_pack_id)
        engine.apply_thresholds({c: t})
        return f"Monitor threshold of **{c}** is now {t:.2f} (the API uses it too). Changed: {engine.threshold_overrides()}"

    load.click(compute, [concept, split, scores, trace], [scores, threshold, stats, curves, highlights], api_name=False)
    threshold.change(show, [concept, threshold, scores, trace], [stats, curves, highlights], api_name=False)
    concept.change(
        lambda c, cache, records: (
            engine.threshold(c) or 0.5,
            *show(c, engine.threshold(c) or 0.5, cache, records),
        ),
        [concept, scores, trace],
        [threshold, stats, curves, highlights],
        api_name=False,
    )
    apply.click(apply_now, [concept, threshold], status, api_name=False)

    @guard(engine, Role.researcher, "saving a threshold profile")
    def save(n: str, c: str, t: float):
        require_probes(engine)
        # the monitor's overrides, with the concept on the slider at the slider's value
        wanted = {**engine.threshold_overrides(), **({c: round(t, 4)} if engine.threshold(c) is not None else {})}
        return save_profile(engine, n, wanted), gr.Dropdown(choices=saved_profiles(engine))

    save_btn.click(save, [name, concept, threshold], [status, profiles], api_name=False)
    load_p.click(
        guard(engine, Role.admin, "applying a threshold profile")(lambda n: load_profile(engine, n)),
        profiles,
        status,
        api_name=False,
    )

    def refresh(records: list[dict]):
        fired = [c["concept"] for r in records or [] for c in r["divergence"]["top_divergences"]]
        choices = list(dict.fromkeys(fired + engine.probe_concepts()))  # what fired in the trace first
        return gr.Dropdown(choices=choices, value=choices[0] if choices else None), gr.Dropdown(
            choices=saved_profiles(engine)
        )

    return refresh, [concept, profiles], [trace]
