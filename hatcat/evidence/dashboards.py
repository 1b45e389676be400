"""Concept dashboards from a corpus scan: `evidence.parquet` beside the probe pack, one row per concept.

Columns: `concept`, `firing_rate` (share of scanned corpus tokens where the concept reaches its pack
threshold), `firing_rate_dev`/`firing_rate_test`, `corpus_mean`/`corpus_std` and `q50`/`q99`/`q999` of its
activation logit on the corpus's dev tokens, and two lists of contexts: `top` (the windows where it is
highest, one token each) and `random` (a uniform sample of the tokens where it fires). A context is
`{left, token, right, doc, logit}`: the text before the token, the token itself (the one to mark), a
little text after it, and the corpus document it comes from.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hatcat.evidence.scan import HIST_BINS, HIST_HI, HIST_LO, WINDOW, ScanState, Windows

LEFT, RIGHT = 12, 6  # tokens shown before and after the marked token
QUANTILES = {"q50": 0.5, "q99": 0.99, "q999": 0.999}
FILE = "evidence.parquet"


def edges() -> torch.Tensor:
    """Lower edges of the histogram's bins (the logit a bin starts at)."""
    return torch.linspace(HIST_LO, HIST_HI, HIST_BINS + 1)[:-1]


def quantile(hist: torch.Tensor, q: float) -> torch.Tensor:
    """[N]: the lower edge of the bin holding each concept's q-quantile, from a [N, BINS] histogram."""
    cdf = hist.cumsum(1).double() / hist.sum(1, keepdim=True).clamp(min=1)
    return edges()[(cdf < q).sum(1).clamp(max=HIST_BINS - 1)]


def _context(windows: Windows, token: int, tokenizer, docs: list[dict], logit: float) -> dict:
    w, p = divmod(int(token), WINDOW)
    ids = windows.ids[w, : windows.lengths[w]].tolist()
    return {
        "left": tokenizer.decode(ids[max(1, p - LEFT) : p]),
        "token": tokenizer.decode(ids[p : p + 1]),
        "right": tokenizer.decode(ids[p + 1 : p + 1 + RIGHT]),
        "doc": docs[int(windows.doc[w])]["id"],
        "logit": round(float(logit), 3),
    }


def rows(state: ScanState, windows: Windows, docs: list[dict], tokenizer, concepts: list[str]) -> list[dict]:
    """One dashboard row per concept (pack row order)."""
    dev_tokens, test_tokens = max(int(state.tokens[:2].sum()), 1), max(int(state.tokens[2]), 1)
    rate = state.fired[:2].sum(0).double() / dev_tokens, state.fired[2].double() / test_tokens
    overall = state.fired.sum(0).double() / max(int(state.tokens.sum()), 1)
    mean = state.sum[:2].sum(0) / dev_tokens
    std = (state.sumsq[:2].sum(0) / dev_tokens - mean.square()).clamp(min=0).sqrt()
    qs = {name: quantile(state.hist[:2].sum(0), q) for name, q in QUANTILES.items()}
    out = []
    for i, concept in enumerate(concepts):
        top = [
            _context(windows, t, tokenizer, docs, v)
            for v, t in zip(state.top_val[:, i].tolist(), state.top_tok[:, i].tolist())
            if t >= 0
        ]
        held = state.sample_key[:, i] < 2.0
        sample = [_context(windows, t, tokenizer, docs, float("nan")) for t in state.sample_tok[held, i].tolist()]
        out.append(
            {
                "concept": concept,
                "firing_rate": round(float(overall[i]), 7),
                "firing_rate_dev": round(float(rate[0][i]), 7),
                "firing_rate_test": round(float(rate[1][i]), 7),
                "corpus_mean": round(float(mean[i]), 4),
                "corpus_std": round(float(std[i]), 4),
                **{name: round(float(v[i]), 2) for name, v in qs.items()},
                "top": top,
                "random": sample,
            }
        )
    return out


def write(folder: Path, table_rows: list[dict]) -> Path:
    """`<folder>/evidence.parquet` (zstd)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(folder) / FILE
    pq.write_table(pa.Table.from_pylist(table_rows), path, compression="zstd", compression_level=9)
    return path


def read(folder: Path) -> dict[str, dict] | None:
    """concept -> dashboard row of the pack at `folder`, or None when it has no dashboards."""
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return {row["concept"]: row for row in table.to_pylist()}


def tokens_scanned(state: ScanState) -> dict[str, int]:
    return {"dev": int(state.tokens[:2].sum()), "test": int(state.tokens[2])}
