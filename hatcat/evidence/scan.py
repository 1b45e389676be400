"""Score the reference corpus once with a probe pack and keep, per concept, what its dashboard and card need.

The corpus is cut into windows (BOS + up to `WINDOW - 1` tokens of one document); windows are scanned in
a fixed shuffled order, so a partial scan is a sample of every register, and the state is saved every few
batches (`<cache>/reference/scan-<pack checksum>.pt`): a stopped scan resumes where it was. Only the
decoder blocks up to the tap run (no output layer). Per batch every statistic is a tensor operation over
[tokens, concepts] (no per-concept Python):

- `top`: the K windows where each concept's activation logit is highest (its max token in each window);
- `sample`: a uniform sample of R tokens where the concept fired (its pack threshold), by random keys;
- `hist[part]`: a histogram of the logits per concept (quantiles; exact counts past any bin edge), `fired`,
  `sum`, `sumsq`, `tokens`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from hatcat.probes import ProbeBank
from hatcat.tap import hidden_at

WINDOW = 128
PARTS = ("dev0", "dev1", "test")  # the dev documents in two folds (cross-fitting the calibration), then test
TOP_K, SAMPLE_R = 20, 10
HIST_LO, HIST_HI, HIST_BINS = -16.0, 24.0, 200


def part_of(doc: dict) -> int:
    """A document's part: test, or one of two dev folds by a hash of its id."""
    if doc["split"] == "test":
        return PARTS.index("test")
    return hashlib.sha256(doc["id"].encode()).digest()[0] % 2


@dataclasses.dataclass
class Windows:
    """The tokenised corpus: `ids` [W, WINDOW] (0-padded), `lengths` [W], `doc` [W], `part` [W] (index into PARTS)."""

    ids: np.ndarray
    lengths: np.ndarray
    doc: np.ndarray
    part: np.ndarray

    @classmethod
    def cut(cls, docs: list[dict], tokenizer, size: int = WINDOW) -> Windows:
        """BOS + up to `size - 1` tokens of one document per window, in document order."""
        ids, lengths, doc, part = [], [], [], []
        encoded = tokenizer([d["text"] for d in docs], add_special_tokens=False)["input_ids"]
        for i, (d, tokens) in enumerate(zip(docs, encoded)):
            for start in range(0, len(tokens), size - 1):
                chunk = [tokenizer.bos_token_id, *tokens[start : start + size - 1]]
                if len(chunk) < 8:
                    continue  # a tail of a few tokens has no context to show
                ids.append(chunk + [0] * (size - len(chunk)))
                lengths.append(len(chunk))
                doc.append(i)
                part.append(part_of(d))
        return cls(
            np.array(ids, np.int32), np.array(lengths, np.int32), np.array(doc, np.int32), np.array(part, np.int8)
        )

    def order(self, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).permutation(len(self.lengths))


@dataclasses.dataclass
class ScanState:
    """Running per-concept statistics; token ids are global `window * WINDOW + position`."""

    top_val: torch.Tensor  # [K, N]
    top_tok: torch.Tensor  # [K, N]
    sample_key: torch.Tensor  # [R, N] (2.0: empty)
    sample_tok: torch.Tensor  # [R, N]
    hist: torch.Tensor  # [2, N, BINS]
    fired: torch.Tensor  # [2, N]
    sum: torch.Tensor  # [2, N] float64
    sumsq: torch.Tensor  # [2, N] float64
    tokens: torch.Tensor  # [2]
    done: int = 0  # windows of the scan order consumed

    @classmethod
    def empty(cls, n: int) -> ScanState:
        full = torch.full
        return cls(
            full((TOP_K, n), float("-inf")), full((TOP_K, n), -1, dtype=torch.long),
            full((SAMPLE_R, n), 2.0), full((SAMPLE_R, n), -1, dtype=torch.long),
            torch.zeros(len(PARTS), n, HIST_BINS, dtype=torch.int64), torch.zeros(len(PARTS), n, dtype=torch.int64),
            torch.zeros(len(PARTS), n, dtype=torch.float64), torch.zeros(len(PARTS), n, dtype=torch.float64),
            torch.zeros(len(PARTS), dtype=torch.int64),
        )  # fmt: skip

    def merge(self, other: ScanState) -> ScanState:
        """Two scans of disjoint windows as one (Ray actors' partial states)."""
        top = _keep_top(torch.cat([self.top_val, other.top_val]), torch.cat([self.top_tok, other.top_tok]), TOP_K)
        key, tok = _keep_top(
            -torch.cat([self.sample_key, other.sample_key]), torch.cat([self.sample_tok, other.sample_tok]), SAMPLE_R
        )
        return ScanState(*top, -key, tok, self.hist + other.hist, self.fired + other.fired, self.sum + other.sum,
                         self.sumsq + other.sumsq, self.tokens + other.tokens, self.done + other.done)  # fmt: skip


def _keep_top(values: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    best = values.topk(k, dim=0)
    return best.values, ids.gather(0, best.indices)


def _sample(state: ScanState, fired: torch.Tensor, token_ids: torch.Tensor, generator: torch.Generator) -> None:
    """Reservoir by random keys: each (token, concept) firing gets a key; a concept keeps its R smallest."""
    n = fired.shape[1]
    token, concept = fired.nonzero(as_tuple=True)
    held = state.sample_key < 2.0
    slot_concept = torch.arange(n).expand(SAMPLE_R, n)[held]
    concepts = torch.cat([slot_concept, concept])
    keys = torch.cat([state.sample_key[held], torch.rand(len(concept), generator=generator)])
    toks = torch.cat([state.sample_tok[held], token_ids[token]])
    order = keys.argsort()
    order = order[concepts[order].argsort(stable=True)]  # by concept, then key
    concepts, keys, toks = concepts[order], keys[order], toks[order]
    first = torch.searchsorted(concepts, concepts)  # each run's start (concepts sorted)
    rank = torch.arange(len(concepts)) - first
    keep = rank < SAMPLE_R
    state.sample_key.fill_(2.0)
    state.sample_key[rank[keep], concepts[keep]] = keys[keep]
    state.sample_tok[rank[keep], concepts[keep]] = toks[keep]


def histogram(logits: torch.Tensor) -> torch.Tensor:
    """[tokens, N] logits -> [N, HIST_BINS] counts on the scan's grid (values past its ends in the end bins)."""
    n = logits.shape[1]
    offsets = (torch.arange(n, device=logits.device) * HIST_BINS).to(torch.int32)
    bins = logits.sub(HIST_LO).mul_(HIST_BINS / (HIST_HI - HIST_LO)).clamp_(0, HIST_BINS - 1).to(torch.int32)
    return torch.bincount(bins.add_(offsets).reshape(-1), minlength=n * HIST_BINS).reshape(n, HIST_BINS).cpu()


def update(
    state: ScanState,
    logits: torch.Tensor,
    real: torch.Tensor,
    first_token: torch.Tensor,
    part: torch.Tensor,
    cap: torch.Tensor,
    generator: torch.Generator,
) -> None:
    """Fold one batch into `state`: `logits` [B, L, N], `real` [B, L] (not padding), `first_token` [B] (global id of
    position 0), `part` [B] (index into PARTS), `cap` [N] the pack's firing logits."""
    length = logits.shape[1]
    masked = logits.masked_fill(~real[..., None], float("-inf"))
    value, where = masked.max(1)  # per window: its strongest token per concept
    state.top_val, state.top_tok = _keep_top(
        torch.cat([state.top_val, value]), torch.cat([state.top_tok, first_token[:, None] + where]), TOP_K
    )
    for s in range(len(PARTS)):
        rows = (part == s)[:, None] & real  # [B, L]
        if not rows.any():
            continue
        chunk = logits[rows]  # [tokens, N]
        fired = chunk >= cap
        _sample(state, fired, (first_token[:, None] + torch.arange(length))[rows], generator)
        state.hist[s] += histogram(chunk)
        state.fired[s] += fired.sum(0)
        ones = torch.ones(1, len(chunk))
        state.sum[s] += (ones @ chunk)[0].double()
        state.sumsq[s] += (ones @ chunk.square())[0].double()
        state.tokens[s] += len(chunk)


def state_path(cache_dir: Path, bank: ProbeBank) -> Path:
    return Path(cache_dir) / "reference" / f"scan-{bank.pack.checksum[:16]}.pt"


def windows_path(cache_dir: Path) -> Path:
    return Path(cache_dir) / "reference" / "windows.npz"


def load_windows(cache_dir: Path, docs: list[dict], tokenizer) -> Windows:
    """The corpus's windows, cut once and cached beside it (keyed by the corpus's document ids)."""
    path = windows_path(cache_dir)
    key = hashlib.sha256("\n".join([*PARTS, *(d["id"] for d in docs)]).encode()).hexdigest()
    if path.is_file():
        saved = np.load(path)
        if str(saved["key"]) == key:
            return Windows(saved["ids"], saved["lengths"], saved["doc"], saved["part"])
    windows = Windows.cut(docs, tokenizer)
    np.savez(path, key=key, **dataclasses.asdict(windows))
    return windows


@torch.no_grad()
def scan(
    model,
    bank: ProbeBank,
    windows: Windows,
    order: np.ndarray,
    state: ScanState,
    save: Path | None,
    batch: int = 16,
    max_windows: int | None = None,
    save_every_s: float = 60.0,
    log=print,
) -> ScanState:
    """Scan `order[state.done:]` (up to `max_windows` more) in batches, saving the state every `save_every_s`."""
    end = len(order) if max_windows is None else min(len(order), state.done + max_windows)
    device = bank.act_weight.device
    generator = torch.Generator().manual_seed(state.done)
    last_save, started, scanned = time.monotonic(), time.monotonic(), 0
    while state.done < end:
        picked = order[state.done : min(end, state.done + batch)]
        width = int(windows.lengths[picked].max())
        ids = torch.from_numpy(windows.ids[picked, :width].astype(np.int64)).to(device)
        real = torch.arange(width)[None, :] < torch.from_numpy(windows.lengths[picked]).long()[:, None]
        hidden = hidden_at(model, {"input_ids": ids, "attention_mask": real.long().to(device)}, [bank.tap_layer])[
            bank.tap_layer
        ]
        logits = torch.nn.functional.linear(hidden.float(), bank.act_weight, bank.act_bias).cpu()
        update(state, logits, real, torch.from_numpy(picked.astype(np.int64)) * WINDOW, torch.from_numpy(windows.part[picked].astype(np.int64)),
               bank.act_cap.cpu(), generator)  # fmt: skip
        state.done += len(picked)
        scanned += int(real.sum())
        if save is not None and (time.monotonic() - last_save > save_every_s or state.done >= end):
            save_state(state, save)
            last_save = time.monotonic()
            log(f"scanned {state.done}/{len(order)} windows, {int(state.tokens.sum())} tokens, "
                f"{scanned / (time.monotonic() - started):.0f} tokens/s")  # fmt: skip
    return state


def save_state(state: ScanState, path: Path) -> None:
    """Write the state whole or not at all (a reader never sees half a file)."""
    partial = path.with_suffix(".part")
    torch.save(dataclasses.asdict(state), partial)
    partial.replace(path)


def load_state(path: Path, n: int) -> ScanState:
    """A saved scan, or an empty one."""
    if path.is_file():
        return ScanState(**torch.load(path, weights_only=True))
    return ScanState.empty(n)
