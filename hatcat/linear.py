"""Products over a decode batch's few rows on a CPU: vocabulary-major `linear`, a packed output layer.

A decode step of a batch projects a handful of rows [B, d] onto many outputs: the whole
vocabulary (262k rows of Gemma 3's tied embedding, 671 MB in fp32) and every probe of the bank
(5,596 per side). For 4 to 32 rows, MKL's path for `F.linear` runs at about half the speed of
the same product taken the other way round, `W @ h.T`: on the 2-core CI machine 113 vs
59 ms for 8 rows onto the vocabulary (one row: 35 ms), 3.1 vs 1.4 ms onto the bank, which
decides how much eight streams gain from sharing a step (`experiments.bench_concurrency`
records both ways as `lm_head_ms`). One row, and many rows (prefill, analysis), stay on
`F.linear`, which is as fast or faster there.

The output layer goes one step further (`FewRowsHead`): at its first product over 2 to 32 rows it
keeps a copy of its fp32 weight in oneDNN's blocked layout (the layout PyTorch's own CPU
weight-prepacking uses; +671 MB for Gemma 3's vocabulary, only once decode batches happen) and
projects through oneDNN's linear: 8 rows onto the vocabulary in 40 vs 63 ms (one row: 34 ms),
close to the time it takes to read the weight once.
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


PACKED_ROWS = range(2, 33)  # rows of an output-layer product that go through the packed copy (measured)
PACK_FOR_ROWS = 8  # the row count oneDNN chooses the blocked layout for


def onednn_packable(weight: torch.Tensor) -> bool:
    """Whether this PyTorch build can keep `weight` in oneDNN's blocked layout (fp32 on a CPU)."""
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()


class FewRowsHead(nn.Linear):
    """An `nn.Linear` for decode batches: 2-32 rows through a oneDNN-packed copy of the weight,
    other products through `linear`. The weight stays the module's own (tying kept); the packed
    copy is a cache, made at the first batched product and again whenever the weight is replaced
    or changed in place, and left out of copies and pickles."""

    _packed: tuple[tuple[int, int], torch.Tensor] | None = None  # ((data_ptr, version) packed from, packed weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.shape[:-1].numel()
        if (
            rows not in PACKED_ROWS
            or not onednn_packable(self.weight)
            or hidden.dtype != torch.float32
            or torch.compiler.is_compiling()  # inductor packs weights itself (its lowering wants constants)
        ):
            return linear(hidden, self.weight, self.bias)
        source = (self.weight.data_ptr(), self.weight._version)
        if self._packed is None or self._packed[0] != source:
            self._packed = (source, torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), PACK_FOR_ROWS))
        flat = hidden.reshape(rows, -1).contiguous()
        out = torch.ops.mkldnn._linear_pointwise(flat, self._packed[1], self.bias, "none", [], "")
        return out.reshape(*hidden.shape[:-1], -1)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_packed"}


def use_few_rows_head(model: nn.Module) -> bool:
    """Make the model's output projection a `FewRowsHead` in place; False when it is not a plain
    `nn.Linear` (left as it is)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not nn.Linear:
        return False
    head.__class__ = FewRowsHead  # a subclass without state: the tied weight stays shared
    return True
