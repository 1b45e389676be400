"""Per-token concept scores of behaviour items for the divergence search (issue 22, item 5).

    nice -n 10 python -m experiments.divergence_states          # resumable; dev items first, then test

One forward of prompt + the model's own output per item (hooks at blocks 6, 9, 12, 15). For each output
token, read on the position that produced it (as a monitored stream does), it stores every concept's
logit (fp16, [T, N]) on several sides:

- `act15`: the bank's activation probe on the tap block (the shipped activation side);
- `act6`: the same probe rows on block 6's state (an early, more lexical block through the bank);
- `w8_out`: the shipped words side as `behaviour_states` reads it (mean input embedding of the last 8
  output tokens before this one); `w8`: the last 8 tokens of prompt + output before it (what a chat
  stream's window holds); `w32`: the last 32; `w8_self`: the last 8 including the token itself (the words
  said so far); `next`: the expected input embedding under the distribution that produced the token (the
  model's own next-token distribution, mapped to concepts by the words-only probe);

plus each token's log-probability and entropy, the shipped token colour (`colour`, as `Monitor.records`)
and, where the item has a known entity, that entity's first-token log-probability at every block's
logit lens and at the output, per producing position (`entity` [5, T]); the mean output state and the
last prompt state per block. `--reference N` adds N windows of the reference corpus (dev part) as
items: the per-concept fits of the search are made on them, never on the benchmark.
Shards under HATCAT_CACHE_DIR/behaviour_divergence/v1 (a shard already written is not recomputed);
`--next-top K` adds the `next` side from the top K tokens alone (`nextK`, in v1-nextK).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from contextlib import ExitStack
from pathlib import Path

import torch

from experiments.behaviour_states import BLOCKS, with_prompts
from hatcat.config import Settings
from hatcat.engine import Engine
from hatcat.generation import encode_prompt
from hatcat.linear import linear
from hatcat.monitor import TEXT_WINDOW
from hatcat.paths import ROOT
from hatcat.readouts import token_stats
from hatcat.tap import tap

DATA = ROOT / "data" / "behaviour"
SIDES = ("act15", "act6", "w8_out", "w8", "w32", "w8_self", "next")
BATCH = 16
REFERENCE_PROMPT, REFERENCE_OUTPUT = 16, 48  # tokens of each reference window: context, then scored tokens


def cache_dir(settings: Settings) -> Path:
    return settings.cache_dir / "behaviour_divergence" / "v1"


def _window(embedded: torch.Tensor, end: torch.Tensor, size: int) -> torch.Tensor:
    """[T, d]: mean of embedded[max(0, e - size) : e] for each end e in `end` (an empty window is zeros)."""
    csum = torch.cat([torch.zeros_like(embedded[:1]), embedded.float().cumsum(0)])
    lo = (end - size).clamp(min=0)
    return (csum[end] - csum[lo]) / (end - lo).clamp(min=1).unsqueeze(1)


@torch.inference_mode()
def features(engine: Engine, rows: list[tuple[dict, list[int], list[int], int | None]]) -> dict:
    """One right-padded forward for a batch of (item, prompt ids, output ids, entity token); the shard."""
    model, monitor = engine.model, engine.monitor
    bank, device = monitor.bank, engine.loaded.device
    embed, head, norm = model.get_input_embeddings(), model.get_output_embeddings(), model.model.norm
    lengths = [len(p) + len(o) for _, p, o, _ in rows]
    ids = torch.full((len(rows), max(lengths)), engine.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, (_, p, o, _) in enumerate(rows):
        ids[r, : lengths[r]], mask[r, : lengths[r]] = torch.tensor(p + o), 1
    ids, mask = ids.to(device), mask.to(device)
    with engine.exclusive(), ExitStack() as stack:
        taps = {b: stack.enter_context(tap(model, b)) for b in BLOCKS}
        last = model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    bos = engine.tokenizer.bos_token_id
    spans = [(len(p), len(p) + len(o)) for _, p, o, _ in rows]
    produced = [torch.arange(a0 - 1, a1 - 1, device=device) for a0, a1 in spans]  # positions that produced the output
    row_of = torch.cat([torch.full((a1 - a0,), r, device=device) for r, (a0, a1) in enumerate(spans)])
    pos = torch.cat(produced)
    # one product per side for the whole batch: the output's distributions, the bank on blocks 15 and 6
    logp = head(last[row_of, pos]).float().log_softmax(-1)
    took, entropy = token_stats(logp, ids[row_of, pos + 1])
    windows: dict[str, list[torch.Tensor]] = {k: [] for k in ("w8_out", "w8", "w32", "w8_self")}
    for r, (_, p, o, _) in enumerate(rows):
        a0, a1 = spans[r]
        first = 1 if p and p[0] == bos else 0  # BOS is not a word (the stream's window skips it)
        words = embed(ids[r, first:a1]).float()
        end = torch.arange(a0, a1, device=device) - first
        windows["w8_out"].append(_window(words[a0 - first :], end - (a0 - first), TEXT_WINDOW))
        windows["w8"].append(_window(words, end, TEXT_WINDOW))
        windows["w32"].append(_window(words, end, 4 * TEXT_WINDOW))
        windows["w8_self"].append(_window(words, end + 1, TEXT_WINDOW))
    expected = (logp.exp().to(embed.weight.dtype) @ embed.weight).float() * float(embed.embed_scale)
    sides = {
        "act15": linear(taps[bank.tap_layer].hidden[row_of, pos].float(), bank.act_weight, bank.act_bias),
        "act6": linear(taps[6].hidden[row_of, pos].float(), bank.act_weight, bank.act_bias),
        "next": linear(expected, bank.text_weight, bank.text_bias),
    }
    sides.update({k: linear(torch.cat(v), bank.text_weight, bank.text_bias) for k, v in windows.items()})
    colours = []
    for key in ("w8_out", "w8"):  # the shipped colour (Monitor.records), with either window
        act = sides["act15"]
        div = torch.tanh((torch.minimum(act, bank.act_cap) - sides[key]) / bank.divergence_scale)
        records = monitor.records(torch.sigmoid(act), torch.sigmoid(sides[key]), div, [""] * len(pos), range(len(pos)))
        colours.append(torch.tensor([rec.max_divergence for rec in records]))
    colour = torch.stack(colours)
    entities = [r for r, row in enumerate(rows) if row[3] is not None]
    lens: dict[int, torch.Tensor] = {}
    if entities:  # the known entity's first token at every block's logit lens, per producing position
        at = torch.cat([produced[r] for r in entities])
        of = torch.cat([torch.full((len(produced[r]),), r, device=device) for r in entities])
        states = torch.stack([taps[b].hidden[of, at] for b in BLOCKS])  # [blocks, positions, d]
        entity_ids = torch.tensor([rows[r][3] for r in entities], device=device)
        lens_lp = head(norm(states)).float().log_softmax(-1)  # [blocks, positions, V]
        picked = lens_lp.gather(
            -1,
            entity_ids.repeat_interleave(torch.tensor([len(produced[r]) for r in entities], device=device))[
                None, :, None
            ].expand(len(BLOCKS), -1, 1),
        )[..., 0]
        for r, part in zip(entities, picked.split([len(produced[r]) for r in entities], dim=1)):
            lens[r] = part
    sizes = [a1 - a0 for a0, a1 in spans]
    out: dict[str, list] = {"ids": [], "tokens": [], "stats": [], "colour": [], "entity": [], "answer": [], "last": []}
    out.update({side: [] for side in SIDES})
    split = {side: sides[side].half().cpu().split(sizes) for side in SIDES}
    logp_rows, stats = logp.split(sizes), torch.stack([took, entropy]).cpu().split(sizes, dim=1)
    for r, (item, p, o, entity) in enumerate(rows):
        a0 = spans[r][0]
        out["ids"].append(item["id"])
        out["tokens"].append(o)
        out["stats"].append(stats[r])
        out["colour"].append(colour[:, sum(sizes[:r]) : sum(sizes[: r + 1])])
        if entity is None:
            out["entity"].append(torch.full((len(BLOCKS) + 1, len(o)), float("nan")))
        else:
            out["entity"].append(torch.cat([lens[r], logp_rows[r][None, :, entity]]).cpu())
        out["answer"].append(torch.stack([taps[b].hidden[r, produced[r]].float().mean(0) for b in BLOCKS]).half().cpu())
        out["last"].append(torch.stack([taps[b].hidden[r, a0 - 1].float() for b in BLOCKS]).half().cpu())
        for side in SIDES:
            out[side].append(split[side][r])
    return out


@torch.inference_mode()
def next_top(engine: Engine, rows: list[tuple[dict, list[int], list[int], int | None]], k: int) -> dict:
    """The `next` side from the top k of each producing distribution only (renormalised): what a stream
    could afford per token (a top-k and k embedding rows instead of a product the size of the output layer)."""
    model, bank, device = engine.model, engine.monitor.bank, engine.loaded.device
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    lengths = [len(p) + len(o) for _, p, o, _ in rows]
    ids = torch.full((len(rows), max(lengths)), engine.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, (_, p, o, _) in enumerate(rows):
        ids[r, : lengths[r]], mask[r, : lengths[r]] = torch.tensor(p + o), 1
    with engine.exclusive():
        last = model.model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).last_hidden_state
    out: dict[str, list] = {"ids": [], f"next{k}": []}
    for r, (item, p, o, _) in enumerate(rows):
        top = head(last[r, len(p) - 1 : len(p) + len(o) - 1]).float().topk(k)
        weights = top.values.softmax(-1).to(embed.weight.dtype)  # [T, k]
        expected = (weights[:, None, :] @ embed.weight[top.indices])[:, 0].float() * float(embed.embed_scale)
        out["ids"].append(item["id"])
        out[f"next{k}"].append(linear(expected, bank.text_weight, bank.text_bias).half().cpu())
    return out


def encode(engine: Engine, item: dict) -> tuple[dict, list[int], list[int], int | None]:
    tok = engine.tokenizer
    if "prompt_ids" in item:  # a reference window, already tokenised
        return item, item["prompt_ids"], item["output_ids"], None
    output = tok(item["output"], add_special_tokens=False).input_ids or [tok.eos_token_id]
    entity = tok(" " + item["object"], add_special_tokens=False).input_ids[0] if item.get("object") else None
    return item, encode_prompt(tok, item["prompt"]), output, entity


def reference_items(engine: Engine, count: int) -> list[dict]:
    """`count` windows of the reference corpus's dev part, spread over its texts: 16 tokens of context,
    then 48 scored tokens."""
    path = engine.settings.cache_dir / "reference" / "corpus.jsonl"
    texts = [json.loads(line) for line in path.read_text().splitlines()]
    texts = [t for t in texts if t["split"] == "dev"]
    step = max(1, len(texts) // count)
    items = []
    for k, text in enumerate(texts[::step][:count]):
        chars = text["text"]
        middle = chars[len(chars) // 2 : len(chars) // 2 + 2000]
        ids = engine.tokenizer(middle, add_special_tokens=False).input_ids[8:]  # off a word boundary
        bos = [engine.tokenizer.bos_token_id]
        prompt, output = bos + ids[:REFERENCE_PROMPT], ids[REFERENCE_PROMPT : REFERENCE_PROMPT + REFERENCE_OUTPUT]
        items.append(
            {"id": f"r-{k}", "task": "reference", "split": "reference", "prompt_ids": prompt, "output_ids": output}
        )
    return items


def cached(folder: Path) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for path in sorted(folder.glob("*.pt")):
        shard = torch.load(path)
        for k, item_id in enumerate(shard["ids"]):
            found[item_id] = {name: shard[name][k] for name in shard if name != "ids"}
    return found


def benchmark_items() -> list[dict]:
    """The benchmark's items in the order they are extracted: dev before test, the withholding
    same-prompt control's secret items early."""
    from experiments.behaviour import load_items

    tasks = load_items()
    rows = [r for name in ("outputs_honest.jsonl", "outputs_lying.jsonl") for r in with_prompts(DATA / name)]
    secret = [r for r in rows if r["task"] == "withholding" and r["frame"] == "secret"]
    wanted = {r["id"] for rows_ in tasks.values() for r in rows_} | {r["id"] for r in secret}
    rank = {"ordinary": 1, "withholding": 2, "hallucination": 3}
    by_id = {r["id"]: r for r in rows if r["id"] in wanted}
    secret_ids = {r["id"] for r in secret}
    return sorted(
        by_id.values(),
        key=lambda r: (r["split"] == "test", 0 if r["id"] in secret_ids else rank.get(r["task"], 4), r["id"]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=int, default=120, help="reference corpus windows (fits of the search)")
    parser.add_argument("--dev-only", action="store_true", help="stop after the dev items")
    parser.add_argument("--next-top", type=int, metavar="K", help="only the `next` side from the top K tokens")
    args = parser.parse_args()
    engine = Engine.from_settings(Settings.from_env())
    folder = cache_dir(engine.settings)
    if args.next_top:
        folder = folder.with_name(f"{folder.name}-next{args.next_top}")
    folder.mkdir(parents=True, exist_ok=True)
    items = reference_items(engine, args.reference) + benchmark_items()
    if args.dev_only:
        items = [r for r in items if r["split"] != "test"]
    done = {item_id for path in folder.glob("*.pt") for item_id in torch.load(path)["ids"]}
    todo = [encode(engine, it) for it in items if it["id"] not in done]
    print(f"{len(todo)} of {len(items)} items to extract", flush=True)
    for start in range(0, len(todo), BATCH):  # in priority order (batches of neighbours, not of similar length)
        batch = todo[start : start + BATCH]
        shard = next_top(engine, batch, args.next_top) if args.next_top else features(engine, batch)
        name = hashlib.sha256(json.dumps(shard["ids"]).encode()).hexdigest()[:20]
        torch.save(shard, folder / f"{name}.pt")
        print(f"{start + len(shard['ids'])}/{len(todo)}", flush=True)


if __name__ == "__main__":
    main()
