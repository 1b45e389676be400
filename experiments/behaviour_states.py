"""Features of each behaviour item from ONE forward pass of its prompt + the model's own output.

    nice -n 10 python -m experiments.behaviour_states data/behaviour/outputs_honest.jsonl

Hooks at blocks 6, 9, 12 and 15 (the shipped pack's tap) and the logits of the same forward give,
per item: token log-probabilities of the output (mean, min, entropy, first token), the states
(mean over the positions that produced the output tokens, as a stream sees them, and the last
prompt token) per block, the shipped monitor's
response-level scores over the output tokens (divergence, activation, the words side alone, the
`Deception` row), and the logit lens of the known entity's first token at each block. Cached in
shards under HATCAT_CACHE_DIR/behaviour (resumable: a shard already written is not recomputed).
"""

from __future__ import annotations

import hashlib
import json
import sys
from contextlib import ExitStack
from pathlib import Path

import torch

from experiments.behaviour_data import read_jsonl
from hatcat.config import Settings
from hatcat.engine import Engine
from hatcat.generation import encode_prompt
from hatcat.linear import linear
from hatcat.monitor import summarise, window_means
from hatcat.readouts import OUTPUT_FEATURES, output_features, token_stats
from hatcat.tap import tap

BLOCKS = (6, 9, 12, 15)
BATCH = 16
FIELDS = ("scalars", "answer", "last", "lens")
SCALARS = (
    *OUTPUT_FEATURES,
    "divergence",
    "activation",
    "minus_words",
    "deception_row",
)


def cache_dir(settings: Settings) -> Path:
    return settings.cache_dir / "behaviour"


def encode(engine: Engine, item: dict) -> tuple[list[int], list[int], int | None]:
    """(prompt ids, output ids, the known entity's first token id or None)."""
    tok = engine.tokenizer
    prompt = encode_prompt(tok, item["prompt"])
    output = tok(item["output"], add_special_tokens=False).input_ids or [tok.eos_token_id]
    entity = tok(" " + item["object"], add_special_tokens=False).input_ids[0] if item.get("object") else None
    return prompt, output, entity


@torch.inference_mode()
def features(engine: Engine, rows: list[tuple[dict, list[int], list[int], int | None]]) -> dict:
    """One right-padded forward for a batch; the shard's contents."""
    model, monitor = engine.model, engine.monitor
    bank = monitor.bank
    device = engine.loaded.device
    lengths = [len(p) + len(o) for _, p, o, _ in rows]
    ids = torch.full((len(rows), max(lengths)), engine.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, (_, p, o, _) in enumerate(rows):
        ids[r, : lengths[r]] = torch.tensor(p + o)
        mask[r, : lengths[r]] = 1
    with engine.exclusive(), ExitStack() as stack:
        taps = {b: stack.enter_context(tap(model, b)) for b in BLOCKS}
        last = model.model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).last_hidden_state
    norm, head = model.model.norm, model.get_output_embeddings()  # logits only where read (not [B, L, 262k])
    deception = bank.index["Deception"]
    spans = [(len(p), len(p) + len(o)) for _, p, o, _ in rows]
    # one product with the output layer for the batch: the output's distributions, then the logit lens
    # of every block at each last prompt token
    lens_in = norm(torch.stack([taps[b].hidden[r, a0 - 1] for r, (a0, _) in enumerate(spans) for b in BLOCKS]))
    logp = head(torch.cat([*(last[r, a0 - 1 : a1 - 1] for r, (a0, a1) in enumerate(spans)), lens_in]))
    logp = logp.float().log_softmax(-1)
    output_lp = logp[: -len(lens_in)].split([a1 - a0 for a0, a1 in spans])
    lens_lp = logp[-len(lens_in) :].view(len(rows), len(BLOCKS), -1)
    out = {"ids": [it["id"] for it, *_ in rows], "scalars": [], "answer": [], "last": [], "lens": []}
    for r, (_, p, o, entity) in enumerate(rows):
        (a0, a1), lp = spans[r], output_lp[r]  # the distributions that produced the output
        took, entropy = token_stats(lp, ids[r, a0:a1].to(device))
        # as in a monitored stream: token k is scored on the state that produced it, with the words
        # of the output tokens before it (none for the first)
        h15 = taps[bank.tap_layer].hidden[r, a0 - 1 : a1 - 1]
        words = window_means(model.get_input_embeddings()(ids[r, a0:a1].to(device)))
        window = torch.cat([torch.zeros_like(words[:1]), words[:-1]])
        act_logit = linear(h15.float(), bank.act_weight, bank.act_bias)
        text_logit = linear(window.float(), bank.text_weight, bank.text_bias)
        records = monitor.records(*bank.scores(h15, window), [""] * len(o), range(len(o)))
        minus_words = torch.tanh((bank.act_cap - text_logit) / bank.divergence_scale).mean(1)
        out["scalars"].append(
            torch.stack(
                [
                    *output_features(took, entropy),
                    torch.tensor(summarise(records).mean_divergence, device=device),
                    (act_logit - bank.act_cap).amax(1).mean(),
                    minus_words.mean(),
                    torch.sigmoid(act_logit[:, deception]).mean(),
                ]
            ).cpu()
        )
        states = [
            taps[b].hidden[r, a0 - 1 : a1 - 1].float().mean(0) for b in BLOCKS
        ]  # the states that produced the output
        out["answer"].append(torch.stack(states).half().cpu())
        out["last"].append(torch.stack([taps[b].hidden[r, a0 - 1].float() for b in BLOCKS]).half().cpu())
        if entity is None:
            out["lens"].append(torch.full((len(BLOCKS) + 1,), float("nan")))
        else:
            out["lens"].append(torch.cat([lens_lp[r, :, entity], lp[0, entity : entity + 1]]).cpu())
    return {k: (torch.stack(v) if k != "ids" else v) for k, v in out.items()}


def cached(folder: Path) -> dict[str, dict]:
    """Every item's features already in the cache's shards."""
    found: dict[str, dict] = {}
    for path in sorted(folder.glob("*.pt")):
        shard = torch.load(path)
        for k, item_id in enumerate(shard["ids"]):
            found[item_id] = {name: shard[name][k] for name in FIELDS}
    return found


def extract(engine: Engine, items: list[dict], folder: Path) -> dict[str, dict]:
    """{item id: {"scalars", "answer" [blocks, d], "last" [blocks, d], "lens"}} for `items` (an item's
    id names its prompt and output), computing only those not in the cache yet, in batches of similar length."""
    folder.mkdir(parents=True, exist_ok=True)
    found = cached(folder)
    todo = [(it, *encode(engine, it)) for it in items if it["id"] not in found]
    todo.sort(key=lambda r: len(r[1]) + len(r[2]))
    for start in range(0, len(todo), BATCH):
        shard = features(engine, todo[start : start + BATCH])
        torch.save(shard, folder / f"{hashlib.sha256(json.dumps(shard['ids']).encode()).hexdigest()[:20]}.pt")
        for k, item_id in enumerate(shard["ids"]):
            found[item_id] = {name: shard[name][k] for name in FIELDS}
        print(f"{start + len(shard['ids'])}/{len(todo)} items", flush=True)
    return {it["id"]: found[it["id"]] for it in items}


def with_prompts(outputs: Path, keep: set[str] | None = None) -> list[dict]:
    """The rows of an outputs file (those in `keep`, if given) with their prompts from its items file."""
    prompts = {r["id"]: r["prompt"] for r in read_jsonl(outputs.with_name(outputs.name.replace("outputs_", "items_")))}
    rows = read_jsonl(outputs)
    return [{**r, "prompt": prompts[r["id"]]} for r in rows if r["id"] in prompts and (keep is None or r["id"] in keep)]


def main(paths: list[str]) -> None:
    engine = Engine.from_settings(Settings.from_env())
    for path in paths:
        extract(engine, with_prompts(Path(path)), cache_dir(engine.settings))


if __name__ == "__main__":
    main(sys.argv[1:])
