"""Training panel: pick concepts or write a custom one, train probes with progress, hot-load the pack."""

from __future__ import annotations

import json
import re

import gradio as gr

from hatcat.access import Role
from hatcat.concepts import ConceptPack, ConceptPackError
from hatcat.concepts.meld import load_meld, merge_into
from hatcat.engine import Engine
from hatcat.errors import HatCatError
from views.access import audit, guard
from views.common import user_error

ID = re.compile(r"[A-Z][A-Za-z0-9]{1,63}")


def lines(text: str) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def custom_pack(
    engine: Engine, base: ConceptPack, cid: str, parents: list[str], definition: str, pos: str, neg: str
) -> ConceptPack:
    """`base` merged with a one-concept meld written under the cache dir (validated like any meld)."""
    if not ID.fullmatch(cid):
        raise gr.Error("A concept id is CamelCase letters and digits, e.g. FalseModesty.", print_exception=False)
    if len(lines(pos)) < 3:
        raise gr.Error("Give at least 3 positive examples, one per line.", print_exception=False)
    meld = {
        "id": f"workbench-{cid.lower()}",
        "concepts": [
            {
                "id": cid,
                "parents": list(parents or []),
                "definition": (definition or "").strip(),
                "positive_examples": lines(pos),
                "negative_examples": lines(neg),
            }
        ],
    }
    path = engine.settings.cache_dir / "melds" / f"{meld['id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meld, indent=1))
    try:
        return merge_into(base, load_meld(path))
    except ConceptPackError as err:
        raise user_error(err) from None


def build(engine: Engine) -> tuple:
    base = engine.concepts
    ids = list(base.ids)
    gr.Markdown(
        "Train activation and text-side probes on the running model. The result **replaces** the loaded probe pack "
        "(use *load probe pack* below to go back to the default one)."
    )
    picked = gr.Dropdown(ids, multiselect=True, label="concepts to train", value=[])
    with gr.Accordion("custom concept", open=False):
        with gr.Row():
            cid = gr.Textbox(label="id (CamelCase)", placeholder="FalseModesty")
            parents = gr.Dropdown(ids, multiselect=True, label="parents", value=[])
        definition = gr.Textbox(label="definition", lines=2)
        with gr.Row():
            pos = gr.Textbox(label="positive examples (one per line)", lines=5)
            neg = gr.Textbox(label="negative examples (one per line)", lines=5)
    go_btn = gr.Button("train and hot-load", variant="primary")
    report = gr.Markdown()
    with gr.Row():
        folder = gr.Textbox(label="probe pack folder", value=str(engine.default_probe_folder()), scale=4)
        load_btn = gr.Button("load probe pack", scale=1)

    @guard(engine, Role.admin, "training probes")
    def run(
        concepts: list[str],
        custom: str,
        custom_parents: list[str],
        text: str,
        p: str,
        n: str,
        progress=gr.Progress(track_tqdm=True),
    ):
        pack = base
        chosen = list(concepts or [])
        if custom and custom.strip():
            pack = custom_pack(engine, base, custom.strip(), custom_parents, text, p, n)
            chosen.append(custom.strip())
        if not chosen:
            raise gr.Error("Pick at least one concept or write a custom one.", print_exception=False)
        audit(engine, "training_run", ", ".join(chosen)[:300], concepts=chosen)
        progress(0.05, desc=f"training {len(chosen)} concept(s)")
        try:
            loaded, run_report = engine.train_and_load(
                chosen, pack, before_load=lambda folder: audit(engine, "pack_hot_loaded", str(folder))
            )
        except (ValueError, HatCatError) as err:
            raise user_error(err) from None
        trained = loaded.folder
        per = loaded.metrics["per_concept"]
        table = "\n".join(
            f"| {c} | {m['threshold']} | {m.get('control_fpr_test', '–')} | {m.get('natural_recall', '–')} "
            f"| {m.get('f1', '–')} |"
            for c, m in per.items()
        )
        return (
            f"Trained {run_report.concepts} concept(s) on {run_report.prompts} prompts in {run_report.wall_seconds:.0f} s; "
            f"hot-loaded `{trained}`.\n\n| concept | threshold | control FPR (held-out) | natural recall "
            f"| template F1 |\n|---|---|---|---|---|\n{table}"
        ), str(trained)

    @guard(engine, Role.admin, "loading a probe pack")
    def load(path: str):
        audit(engine, "pack_loaded", str(path))
        try:
            loaded = engine.load_probes(path)
        except (OSError, ValueError, HatCatError) as err:
            raise user_error(ValueError(f"cannot load {path}: {err}")) from None
        return f"Loaded probe pack `{loaded.id}` ({len(loaded.concepts)} concepts, tap layer {loaded.manifest['tap_layer']})."

    go_btn.click(run, [picked, cid, parents, definition, pos, neg], [report, folder], api_name="train")
    load_btn.click(load, folder, report, api_name=False)
    return None
