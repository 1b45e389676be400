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
from hatcat.tap import tap

BLOCKS = (6, 9, 12, 15)
BATCH = 16
SCALARS = (
    "mean_logprob",
    "min_logprob",
    "entropy",
    "first_token_prob",
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


def _shard_name(rows: list[tuple[dict, list[int], list[int]]]) -> str:
    key = json.dumps([(r["id"], p, o) for r, p, o in rows])
    return hashlib.sha256(key.encode()).hexdigest()[:20] + ".pt"


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
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits.float()
    logp = logits.log_softmax(-1)
    norm, head = model.model.norm, model.get_output_embeddings()
    deception = bank.index["Deception"]
    out = {"ids": [it["id"] for it, *_ in rows], "scalars": [], "answer": [], "last": [], "lens": []}
    for r, (_, p, o, entity) in enumerate(rows):
        a0, a1 = len(p), len(p) + len(o)
        lp = logp[r, a0 - 1 : a1 - 1]  # the distributions that produced the output tokens
        took = lp.gather(1, ids[r, a0:a1, None].to(device))[:, 0]
        entropy = -(lp.exp() * lp).sum(-1)
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
                    took.mean(),
                    took.min(),
                    entropy.mean(),
                    took[0].exp(),
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
            lens = [head(norm(taps[b].hidden[r, a0 - 1])).float().log_softmax(-1)[entity] for b in BLOCKS]
            out["lens"].append(torch.stack([*lens, logp[r, a0 - 1, entity]]).cpu())
    return {k: (torch.stack(v) if k != "ids" else v) for k, v in out.items()}


def extract(engine: Engine, items: list[dict], folder: Path) -> dict[str, dict]:
    """{item id: {"scalars", "answer" [blocks, d], "last" [blocks, d], "lens"}} for every item, from the cache."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(it, *encode(engine, it)) for it in items]
    rows.sort(key=lambda r: len(r[1]) + len(r[2]))
    found: dict[str, dict] = {}
    for start in range(0, len(rows), BATCH):
        batch = rows[start : start + BATCH]
        path = folder / _shard_name([(it, p, o) for it, p, o, _ in batch])
        if not path.exists():
            torch.save(features(engine, batch), path)
        shard = torch.load(path)
        for k, item_id in enumerate(shard["ids"]):
            found[item_id] = {name: shard[name][k] for name in ("scalars", "answer", "last", "lens")}
        if start // BATCH % 20 == 0:
            print(f"{start + len(batch)}/{len(rows)} items", flush=True)
    return found


def extract_file(engine: Engine, outputs: Path) -> dict[str, dict]:
    """`extract` for every row of an outputs file (prompts from its items file; the same batches every time)."""
    prompts = {r["id"]: r["prompt"] for r in read_jsonl(outputs.with_name(outputs.name.replace("outputs_", "items_")))}
    rows = [r for r in read_jsonl(outputs) if r["id"] in prompts]
    return extract(engine, [{**r, "prompt": prompts[r["id"]]} for r in rows], cache_dir(engine.settings))


def main(paths: list[str]) -> None:
    engine = Engine.from_settings(Settings.from_env())
    for path in paths:
        extract_file(engine, Path(path))


if __name__ == "__main__":
    main(sys.argv[1:])
