"""Training panel: pick concepts or write a custom one, train probes with progress, hot-load the pack."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import gradio as gr

from hatcat.access import Role
from hatcat.concepts import ConceptPack, ConceptPackError
from hatcat.concepts.meld import load_meld, merge_into
from hatcat.engine import Engine
from hatcat.probes import ProbePackError
from hatcat.training.run import TrainSettings, train
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
    known: dict[str, ConceptPack] = {base.id: base}  # concept packs a probe pack may have been trained on
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
        tap = engine.bank.tap_layer if engine.bank else TrainSettings().tap_layer
        out = engine.settings.cache_dir / "packs" / f"workbench-{time.strftime('%Y%m%d-%H%M%S')}"
        audit(engine, "training_run", ", ".join(chosen)[:300], concepts=chosen, tap_layer=tap, out=str(out))
        progress(0.05, desc=f"training {len(chosen)} concept(s) at layer {tap}")
        try:
            with engine.exclusive():
                trained, run_report = train(
                    engine.loaded,
                    pack,
                    TrainSettings(concepts=tuple(chosen), tap_layer=tap),
                    engine.settings.cache_dir,
                    out,
                )
            progress(0.95, desc="hot-loading")
            audit(engine, "pack_hot_loaded", str(trained))
            loaded = engine.load_probes(trained, concepts=pack)
        except (ValueError, ProbePackError) as err:
            raise user_error(err) from None
        known[pack.id] = pack
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
            recorded = json.loads((Path(path) / "manifest.json").read_text())["concept_pack"]["id"]
            loaded = engine.load_probes(path, concepts=known.get(recorded, engine.concepts))
        except (OSError, ValueError, KeyError, ProbePackError) as err:
            raise user_error(ProbePackError(f"cannot load {path}: {err}")) from None
        return f"Loaded probe pack `{loaded.id}` ({len(loaded.concepts)} concepts, tap layer {loaded.manifest['tap_layer']})."

    go_btn.click(run, [picked, cid, parents, definition, pos, neg], [report, folder], api_name="train")
    load_btn.click(load, folder, report, api_name=False)
    return None
