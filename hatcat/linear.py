"""`linear` for decode batches on a CPU: a product over 4 to 32 rows is taken vocabulary-major.

A decode step of a batch projects a handful of rows [B, d] onto many outputs: the whole
vocabulary (262k rows of Gemma 3's tied embedding, 671 MB in fp32) and every probe of the bank
(5,596 per side). For 4 to 32 rows, MKL's path for `F.linear` runs at about half the speed of
the same product taken the other way round, `W @ h.T`: on the 2-core CI machine 113 vs
59 ms for 8 rows onto the vocabulary (one row: 35 ms), 3.1 vs 1.4 ms onto the bank, which
decides how much eight streams gain from sharing a step (`experiments.bench_concurrency`
records both ways as `lm_head_ms`). One row, and many rows (prefill, analysis), stay on
`F.linear`, which is as fast or faster there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FEW_ROWS = range(4, 33)  # rows of a CPU product that take the vocabulary-major way (measured, see above)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, vocabulary-major for `FEW_ROWS` rows on a CPU; the same values
    up to float summation order."""
    rows = x.shape[:-1].numel()
    if x.device.type != "cpu" or rows not in FEW_ROWS:
        return F.linear(x, weight, bias)
    out = (weight @ x.reshape(rows, -1).T.contiguous()).T.contiguous()  # a contiguous [d, rows] is ~9% faster
    if bias is not None:
        out += bias
    return out.reshape(*x.shape[:-1], -1)


class FewRowsHead(nn.Linear):
    """An `nn.Linear` computed by `linear`: same weights (tying kept), no state of its own."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return linear(hidden, self.weight, self.bias)


def use_few_rows_head(model: nn.Module) -> bool:
    """Make the model's output projection a `FewRowsHead` in place; False when it is not a plain
    `nn.Linear` (left as it is)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not nn.Linear:
        return False
    head.__class__ = FewRowsHead  # a subclass without state: the tied weight stays shared
    return True
