"""The texts of the recipe comparison (dev) and the signal evaluation (test), and their token states.

python -m experiments.recipe_data [--pack]   # extract (resumable: a rerun computes only what is missing)

Dev: the project's natural scenes (42 concepts) and divergence pairs, written by the HatCat
authors; training texts for those concepts and their negatives; the model's own continuations
for the dev concepts; the control corpus's dev and test parts. Every text's token states at the
tap layer go to the token-state cache under $HATCAT_CACHE_DIR.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from hatcat.concepts import load_pack
from hatcat.config import Settings
from hatcat.model import load_model
from hatcat.train import DEFAULT_MELDS
from hatcat.training.prompts import negatives
from hatcat.training.recipe import continuation_prompt, control_texts, training_texts
from hatcat.training.states import TokenStateCache, continuations, extract_states

ROOT = Path(__file__).resolve().parents[1]
TAP_LAYER = 15
K_TEXTS = 4
N_CONTINUATIONS = 1


def dev_scenes() -> dict[str, list[str]]:
    doc = yaml.safe_load((ROOT / "data" / "eval" / "natural_scenes.yaml").read_text())
    return {c["id"]: c["scenes"] for c in doc["concepts"]}


def divergence_pairs() -> list[dict[str, str]]:
    return yaml.safe_load((ROOT / "data" / "eval" / "divergence_pairs.yaml").read_text())["pairs"]


def dev_plan(pack) -> tuple[list[str], dict[str, tuple[list[str], list[str]]]]:
    """The dev concepts plus their hard and easy negative concepts, in pack order."""
    dev = list(dev_scenes())
    neg = {c: negatives(pack, c, pack.ids) for c in dev}
    needed = set(dev) | {n for hard, easy in neg.values() for n in (*hard, *easy)}
    return [c for c in pack.ids if c in needed], neg


def continuation_file(cache_dir: Path) -> Path:
    return cache_dir / "text_states" / "continuations.json"


def main() -> int:
    settings = Settings.from_env()
    pack = load_pack(None, melds=DEFAULT_MELDS)
    concepts, _ = dev_plan(pack)
    loaded = load_model(settings.model_name, settings.device, settings.dtype, settings.cache_dir, settings.hf_offline)
    cache = TokenStateCache(settings.cache_dir, loaded.name, TAP_LAYER)
    extract = lambda texts, what: (
        extract_states(loaded.model, loaded.tokenizer, texts, cache, chunk=128),
        print(f"{what}: done", flush=True),
    )
    # in order of need, each group finished before the next (a stopped run keeps every finished chunk)
    extract(control_texts("dev"), "control corpus, dev part")
    extract([s for scenes in dev_scenes().values() for s in scenes], "dev scenes")
    extract([p[k] for p in divergence_pairs() for k in ("implied", "named")], "divergence pairs")
    for k in range(1, K_TEXTS + 1):
        extract([t for c in concepts for t in training_texts(pack[c], k)], f"dev concepts' training texts, k={k}")
        if k == 1:
            _continuations(settings, pack, loaded, cache)
    extract(control_texts("test"), "control corpus, test part")
    if "--pack" in sys.argv:  # then every concept's training texts: one of each before a second, and so on
        for k in range(1, K_TEXTS + 1):
            extract([t for c in pack.ids for t in training_texts(pack[c], k)], f"pack training texts, k={k}")
    return 0


def _continuations(settings, pack, loaded, cache) -> None:
    """The model's own continuation of a prompt about each dev concept, cached as JSON, then encoded alone."""
    path = continuation_file(settings.cache_dir)
    done = json.loads(path.read_text()) if path.is_file() else {}
    todo = [c for c in dev_scenes() if c not in done]
    if todo:
        prompts = [continuation_prompt(pack[c]) for c in todo for _ in range(N_CONTINUATIONS)]
        out = continuations(loaded.model, loaded.tokenizer, prompts)
        for i, c in enumerate(todo):
            done[c] = out[i * N_CONTINUATIONS : (i + 1) * N_CONTINUATIONS]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(done, indent=1))
    extract_states(loaded.model, loaded.tokenizer, [t for ts in done.values() for t in ts if t], cache)


if __name__ == "__main__":
    sys.exit(main())
