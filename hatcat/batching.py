"""Continuous batching: concurrent generations decode together in ONE running batch.

    generation = scheduler.submit(prompt, settings, steerings, monitor, vectors)  # QueueFull past the bound
    for event in generation:      # MonitoredToken ... MonitoredFinish (record / summary None unmonitored)
        ...
    generation.cancel()           # the row leaves the batch at the next step

A scheduler thread runs the batch. Each iteration, holding the model (`hold`, the engine's fair
lock, so analyses and pack loads interleave between steps):

1. admit: waiting requests (up to `max_batch` rows in all) are prefilled together, left-padded,
   in a fresh KV cache, and merged into the running cache (both left-padded to one length);
   each gets its first token from its own prefill logits;
2. step: one single-token forward for every row: `input_ids` [B, 1], the 2-D padding mask,
   per-row `position_ids` (a row's real length, so RoPE never sees the padding) — or, while no
   row is padded (one request, or requests of one length), neither, as in a plain decode;
3. per row: its own sampler (temperature, top-p/k, repetition penalty, seed), detokenizer, stop
   sequences, max tokens and token records; the tap state of the whole batch [B, d] is scored by
   the probe bank in one matrix product per side and one monitor pass;
4. leave: rows that ended or were cancelled are dropped from the cache (and leading columns
   that only padding still uses are cut).

Steering is additive on the residual stream, so a batch carries one vector per row per steered
block ([B, d], zeros for rows that do not steer); hooks are attached for each forward and removed
after it, so the model carries none between steps.

The KV cache is transformers' `DynamicCache` with full-length layers for every block (sliding
window blocks are masked by transformers' mask functions instead of being truncated), so rows
of different lengths share one time axis: each row's tokens are right-aligned, padding on the left.
"""

from __future__ import annotations

import inspect
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, PreTrainedTokenizerBase

from hatcat.errors import HatCatError, InvalidValue
from hatcat.generation import (
    Decoder,
    Finished,
    GenerationSettings,
    MonitoredFinish,
    MonitoredToken,
    TokenStep,
    encode_prompt,
    stop_token_ids,
)
from hatcat.model import check_context, context_length
from hatcat.monitor import Monitor, ResponseSummary, TextWindow, TokenRecord, mean_embeddings, summarise
from hatcat.ranking import top2_update
from hatcat.readouts import output_features, token_stats
from hatcat.sampling import Sampler, draw_rows
from hatcat.steering import Steering, SteeringVectors
from hatcat.tap import Tap, tap

_END = object()
CANCEL_POLL_S = 0.1  # how often a reader waiting for its next event looks at its cancel flag


class QueueFull(HatCatError):
    """More generations waiting than `HATCAT_MAX_QUEUE` allows."""

    status = 429
    code = "queue_full"


@dataclass(eq=False)
class _Row:
    """One request in the running batch."""

    prompt_ids: list[int]
    settings: GenerationSettings
    steerings: tuple[Steering, ...]
    monitor: Monitor | None
    vectors: SteeringVectors | None
    out: queue.Queue
    room: int  # tokens it may generate: max_tokens, or less where the context ends
    cancelled: threading.Event = field(default_factory=threading.Event)
    sampler: Sampler | None = None
    decoder: Decoder | None = None
    window: TextWindow | None = None
    steer: dict[int, torch.Tensor] = field(default_factory=dict)  # block -> vector [d]
    records: list[TokenRecord] = field(default_factory=list)
    unreleased: dict[int, TokenRecord] = field(default_factory=dict)  # step index -> record, until the text is final
    readout_sums: dict[int, torch.Tensor] = field(default_factory=dict)  # block -> sum of its states over the output
    token_stats: list[torch.Tensor] = field(default_factory=list)  # per output token: [log-prob, entropy]
    best: torch.Tensor | None = None  # [2, N]: each concept's two highest rank scores so far (hatcat/ranking.py)
    behaviour_sum: torch.Tensor | None = None  # [R]: the behaviour rows' activation summed over the scored tokens
    scored: int = 0  # tokens scored so far
    last_token: int = 0
    done: bool = False


class Generation:
    """A submitted request's events, in order; iterating blocks until the next one arrives, and
    ends (the row leaving the batch) once the request's `cancel` flag is set."""

    def __init__(self, row: _Row, cancel: threading.Event | None = None) -> None:
        self._row = row
        self._cancel = cancel

    def __iter__(self) -> Iterator[object]:
        return self

    @property
    def monitored(self) -> bool:
        """Whether its tokens carry records (a probe pack was loaded when it was submitted)."""
        return self._row.monitor is not None

    def __next__(self) -> object:
        while True:
            if self._cancel is not None and self._cancel.is_set():
                self.cancel()
                raise StopIteration
            try:
                item = self._row.out.get(timeout=CANCEL_POLL_S if self._cancel is not None else None)
                break
            except queue.Empty:
                continue
        if item is _END:
            self._row.out.put(_END)  # later calls end too
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        """Leave the batch (or the queue) at the next step; iteration ends at once."""
        self._row.cancelled.set()
        self._row.out.put(_END)

    close = cancel


class Scheduler:
    """Owns the running batch of one model; `submit` is thread-safe."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        hold: Callable[[], AbstractContextManager],
        max_batch: int = 8,
        max_queue: int = 64,
    ) -> None:
        self.model, self.tokenizer, self.hold = model, tokenizer, hold
        self.max_batch, self.max_queue = max_batch, max_queue
        self.device = next(model.parameters()).device
        self.context = context_length(model)
        self.eos = stop_token_ids(model, tokenizer)
        self.cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self._waiting: list[_Row] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        # the running batch, touched only by the scheduler thread
        self.rows: list[_Row] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [B, L] long, 1 = a real token
        self.padded = False  # any 0 in `mask`: without padding, forwards take no mask and no positions

    # ---- the caller's side ---------------------------------------------------------------

    def submit(
        self,
        prompt: str,
        settings: GenerationSettings,
        steerings: list[Steering] | tuple[Steering, ...] = (),
        monitor: Monitor | None = None,
        vectors: SteeringVectors | None = None,
        cancel: threading.Event | None = None,
    ) -> Generation:
        """Queue a generation; it joins the running batch at the next step with room.

        Raises InvalidValue / ContextLengthExceeded for a bad prompt, QueueFull past `max_queue` waiting."""
        if not isinstance(prompt, str):
            raise InvalidValue(f"prompt must be a string, got {type(prompt).__name__}", param="prompt")
        prompt_ids = encode_prompt(self.tokenizer, prompt)
        if not prompt_ids:
            raise InvalidValue("prompt is empty: it encodes to no tokens", param="prompt")
        check_context(self.model, len(prompt_ids), "prompt", room=1)
        room = settings.max_tokens if self.context is None else min(settings.max_tokens, self.context - len(prompt_ids))
        row = _Row(prompt_ids, settings, tuple(steerings), monitor, vectors, queue.Queue(), room)
        with self._cond:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(
                    f"{len(self._waiting)} generations are already waiting for the model "
                    f"(HATCAT_MAX_QUEUE={self.max_queue}); retry shortly",
                    headers={"Retry-After": "1"},
                )
            self._waiting.append(row)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="hatcat-batch", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return Generation(row, cancel)

    @property
    def depth(self) -> int:
        """Generations running or waiting."""
        with self._cond:
            return len(self._waiting) + len(self.rows)

    # ---- the scheduler thread ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self.rows:
                    self._cond.wait()
                room = self.max_batch - len(self.rows)
                joining, self._waiting = self._waiting[:room], self._waiting[room:]
            joining = [r for r in joining if not r.cancelled.is_set()]
            try:
                with self.hold():
                    if joining:
                        self._admit(joining)
                    if self.rows:
                        self._step()
            except Exception as err:  # noqa: BLE001 - a failed forward fails every row in it; the loop goes on
                for row in self.rows + joining:
                    if not row.done:
                        row.out.put(err)
                        row.out.put(_END)
                self.rows, self.cache, self.mask = [], None, None

    @torch.inference_mode()
    def _admit(self, rows: list[_Row]) -> None:
        """Prefill the joining rows together (left-padded) and merge them into the running batch."""
        for row in rows:
            self._prepare(row)
        rows = [r for r in rows if not r.done]
        if not rows:
            return
        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
            mask[i, width - len(row.prompt_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        padded = bool((mask == 0).any())
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits, hidden = self._forward(rows, ids, mask if padded else None, positions if padded else None, cache)
        if padded:
            _zero_padding(cache, mask)  # padded positions' states stay out of every later sum
        self.cache, self.mask = _merge(self.cache, self.mask, cache, mask)
        self.padded = bool((self.mask == 0).any())
        self.rows = self.rows + rows
        self._emit(rows, logits, hidden)
        self._drop_finished()

    def _prepare(self, row: _Row) -> None:
        """A row's sampler, decoder, words window and steering vectors (under the model)."""
        row.sampler = Sampler(row.settings, torch.tensor([row.prompt_ids], device=self.device), self.eos)
        row.decoder = Decoder(self.tokenizer, row.settings, self.eos, len(row.prompt_ids), row.room)
        try:
            if row.monitor is not None:
                row.window = TextWindow()
                row.window.push([i for i in row.prompt_ids if i != self.tokenizer.bos_token_id])  # words only
                for steering in row.steerings:
                    layer, vector = row.vectors.vector(steering)
                    row.steer[layer] = row.steer.get(layer, 0) + vector
        except Exception as err:  # noqa: BLE001 - e.g. a steering whose concept the pack lost: this row fails alone
            self._fail(row, err)

    @torch.inference_mode()
    def _step(self) -> None:
        rows = self.rows
        ids = torch.tensor([[r.last_token] for r in rows], dtype=torch.long, device=self.device)
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(rows), 1))], dim=1)
        if self.padded:  # rows of different lengths: the padding mask and each row's own position
            positions = torch.tensor(
                [[len(r.prompt_ids) + r.decoder.generated - 1] for r in rows], dtype=torch.long, device=self.device
            )
            logits, hidden = self._forward(rows, ids, self.mask, positions, self.cache)
        else:  # one row, or rows of one length: positions follow the cache, as in a plain decode
            logits, hidden = self._forward(rows, ids, None, None, self.cache)
        self._emit(rows, logits, hidden)
        self._drop_finished()

    def _forward(
        self,
        rows: list[_Row],
        ids: torch.Tensor,
        mask: torch.Tensor | None,
        positions: torch.Tensor | None,
        cache: DynamicCache,
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """One forward of `rows` with their steering and taps: last-position logits [B, V] (fp32) and
        {tap layer: states [B, d]} at the last position. `mask`/`positions` None: nothing is padded."""
        with ExitStack() as stack:
            for layer in sorted({layer for r in rows for layer in r.steer}):
                vectors = torch.stack([r.steer.get(layer, self._zeros) for r in rows])  # [B, d]
                stack.enter_context(tap(self.model, layer, edit=_adder(vectors)))
            taps: dict[int, Tap] = {
                layer: stack.enter_context(tap(self.model, layer))
                for layer in sorted({b for r in rows if r.monitor is not None for b in r.monitor.blocks})
            }
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **{self.cache_kwarg: cache},
            )
        return out.logits[:, -1].float(), {layer: t.hidden[:, -1] for layer, t in taps.items()}

    @property
    def _zeros(self) -> torch.Tensor:
        return torch.zeros(self.model.config.get_text_config().hidden_size, device=self.device)

    def _emit(self, rows: list[_Row], logits: torch.Tensor, hidden: dict[int, torch.Tensor]) -> None:
        """The per-token step, after the prefill and after each decode forward: score every monitored
        row (one pass per monitor), draw every row's token (one pass), then each row's decoder."""
        records = self._score(rows, hidden)
        live = [i for i, row in enumerate(rows) if not (row.done or row.cancelled.is_set())]
        # every row's token drawn together, then read in one transfer: one device sync per step, not one per row
        drawn = draw_rows([rows[i].sampler for i in live], logits[live]).tolist() if live else []
        stats = self._token_stats(rows, live, logits, drawn)
        for i, token in zip(live, drawn):
            row = rows[i]
            row.last_token = token
            if i in records:
                row.unreleased[row.decoder.generated] = records[i]
            if row.window is not None:
                row.window.push([token])
            # behaviour read-outs: the output's mean state per block and its token probabilities
            if i in stats and token not in row.decoder.eos:
                for block in row.monitor.readouts.blocks:
                    row.readout_sums[block] = row.readout_sums.get(block, 0) + hidden[block][i].float()
                row.token_stats.append(stats[i])
            steps, finished = row.decoder.push(token)
            self._release(row, steps)
            if finished is not None:
                self._finish(row, finished)

    @staticmethod
    def _token_stats(
        rows: list[_Row], live: list[int], logits: torch.Tensor, drawn: list[int]
    ) -> dict[int, torch.Tensor]:
        """Row index -> [log-prob, entropy] of its drawn token, for the rows whose monitor has read-outs (one pass)."""
        readers = [(k, i) for k, i in enumerate(live) if rows[i].monitor is not None and rows[i].monitor.readouts]
        if not readers:
            return {}
        logprobs = logits[[i for _, i in readers]].log_softmax(-1)
        tokens = torch.tensor([drawn[k] for k, _ in readers], device=logits.device)
        both = torch.stack(token_stats(logprobs, tokens), dim=1)  # [readers, 2]
        return {i: both[n] for n, (_, i) in enumerate(readers)}

    def _score(self, rows: list[_Row], hidden: dict[int, torch.Tensor]) -> dict[int, TokenRecord]:
        """Records for the monitored rows: per monitor, the probe bank's one matmul over their states."""
        by_monitor: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            if row.monitor is not None and not row.done:
                by_monitor.setdefault(id(row.monitor), []).append(i)
        records: dict[int, TokenRecord] = {}
        for index in by_monitor.values():
            monitor = rows[index[0]].monitor
            states = hidden[monitor.bank.tap_layer][index]  # [b, d]
            windows = mean_embeddings(self.model.get_input_embeddings(), [rows[i].window for i in index])
            act, text, div = monitor.bank.scores(states, windows)
            rank = monitor.bank.rank_score(act, text)
            scored = monitor.records(
                act, text, div, [""] * len(index), [rows[i].decoder.generated for i in index], rank
            )
            records.update(zip(index, scored))
            behaviour = act[:, monitor.behaviour_rows]  # [b, R]
            for k, i in enumerate(index):
                row = rows[i]
                row.best = top2_update(row.best, rank[k])
                row.behaviour_sum = behaviour[k] if row.behaviour_sum is None else row.behaviour_sum + behaviour[k]
                row.scored += 1
        return records

    def _release(self, row: _Row, steps: list[TokenStep]) -> None:
        for step in steps:
            record = row.unreleased.pop(step.index, None)
            if record is not None:
                record = replace(record, token=step.text)
                row.records.append(record)
            row.out.put(MonitoredToken(step, record))

    def _finish(self, row: _Row, finished: Finished) -> None:
        row.out.put(MonitoredFinish(finished, _summary(row)))
        row.out.put(_END)
        row.done = True

    def _fail(self, row: _Row, err: BaseException) -> None:
        row.out.put(err)
        row.out.put(_END)
        row.done = True

    def _drop_finished(self) -> None:
        keep = [i for i, r in enumerate(self.rows) if not r.done and not r.cancelled.is_set()]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.cache, self.mask = [], None, None
            return
        index = torch.tensor(keep, device=self.device)
        self.rows = [self.rows[i] for i in keep]
        self.mask = self.mask[index]
        used = int(self.mask.any(0).nonzero()[0])  # leading columns only padding uses
        self.mask = self.mask[:, used:]
        self.padded = bool((self.mask == 0).any())
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, used:]
            layer.values = layer.values[index, :, used:]


def _summary(row: _Row) -> ResponseSummary | None:
    """A monitored row's response summary, with its behaviour rows and read-outs where the monitor has them."""
    if row.monitor is None:
        return None
    ranked = row.monitor.top_concepts(row.best[None])[0] if row.best is not None else []
    summary = summarise(row.records, ranked)
    behaviours = {}
    if row.scored and row.monitor.behaviour_names:
        behaviours.update(row.monitor.row_behaviours(row.behaviour_sum / row.scored))
    if row.monitor.readouts is not None and row.token_stats:
        stats = torch.stack(row.token_stats)  # [T, 2]
        means = {block: total / len(stats) for block, total in row.readout_sums.items()}
        behaviours.update(row.monitor.readouts.score(means, output_features(stats[:, 0], stats[:, 1])))
    return replace(summary, behaviours=behaviours) if behaviours else summary


def _adder(vectors: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Steering edit for a batch: row b of the block's output [B, T, d] gets vectors[b]."""

    def add(hidden: torch.Tensor) -> torch.Tensor:
        return hidden + vectors[:, None, :].to(hidden.dtype)

    return add


def _zero_padding(cache: DynamicCache, mask: torch.Tensor) -> None:
    """Zero the keys and values of padded positions (a fully masked query can produce NaN there)."""
    pad = (mask == 0)[:, None, :, None]  # [B, 1, L, 1]
    for layer in cache.layers:
        layer.keys = layer.keys.masked_fill(pad, 0.0)
        layer.values = layer.values.masked_fill(pad, 0.0)


def _merge(
    cache: DynamicCache | None, mask: torch.Tensor | None, joining: DynamicCache, joining_mask: torch.Tensor
) -> tuple[DynamicCache, torch.Tensor]:
    """The running cache and a prefilled one as one batch: both left-padded to the longer time axis."""
    if cache is None:
        return joining, joining_mask
    length = max(mask.shape[1], joining_mask.shape[1])
    for mine, theirs in zip(cache.layers, joining.layers):
        mine.keys = torch.cat([_left_pad(mine.keys, length), _left_pad(theirs.keys, length)])
        mine.values = torch.cat([_left_pad(mine.values, length), _left_pad(theirs.values, length)])
    merged = torch.cat(
        [F.pad(mask, (length - mask.shape[1], 0)), F.pad(joining_mask, (length - joining_mask.shape[1], 0))]
    )
    return cache, merged


def _left_pad(states: torch.Tensor, length: int) -> torch.Tensor:
    """[B, H, L, D] -> [B, H, length, D] with zeros before."""
    return F.pad(states, (0, 0, length - states.shape[2], 0))
