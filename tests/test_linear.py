"""The few-rows products of `hatcat.linear`: same values as `F.linear`, and the output layer's packed
copy follows its weight (tying kept, repacked after an in-place change, left out of copies)."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hatcat.linear import FewRowsHead, linear, onednn_packable, use_few_rows_head


class TiedModel(nn.Module):
    def __init__(self, vocab: int = 3000, d: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight

    def get_output_embeddings(self) -> nn.Module:
        return self.head


@pytest.mark.parametrize("rows", [1, 2, 5, 8, 32, 40])
def test_linear_matches_f_linear_for_any_row_count(rows: int) -> None:
    torch.manual_seed(rows)
    x, w, b = torch.randn(rows, 64), torch.randn(500, 64), torch.randn(500)
    torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 64), (3, 64), (8, 64), (2, 4, 64), (40, 64)])
def test_output_layer_matches_its_weight_in_every_shape(shape: tuple[int, ...]) -> None:
    model = TiedModel()
    assert use_few_rows_head(model) and type(model.head) is FewRowsHead
    x = torch.randn(*shape)
    with torch.inference_mode():
        torch.testing.assert_close(model.head(x), x @ model.embed.weight.T, rtol=1e-5, atol=1e-4)
    assert model.head.weight is model.embed.weight


@pytest.mark.skipif(not onednn_packable(torch.zeros(1)), reason="this PyTorch build has no oneDNN")
def test_packed_copy_is_remade_when_the_weight_changes_and_left_out_of_copies() -> None:
    model = TiedModel()
    use_few_rows_head(model)
    x = torch.randn(8, 64)
    with torch.inference_mode():
        model.head(x)
    assert model.head._packed is not None
    with torch.no_grad():
        model.embed.weight.mul_(-2.0)  # e.g. a weight edited in place after the first batch
    with torch.inference_mode():
        torch.testing.assert_close(model.head(x), x @ model.embed.weight.T, rtol=1e-5, atol=1e-4)
    twin = copy.deepcopy(model)
    assert twin.head._packed is None and twin.head.weight is twin.embed.weight
    with torch.inference_mode():
        torch.testing.assert_close(twin.head(x), model.head(x))


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("c++") is None, reason="torch.compile on a CPU needs a C++ compiler (apt-get install g++)"
)
def test_output_layer_compiles_with_inductor_for_a_batch() -> None:
    model = TiedModel()
    use_few_rows_head(model)
    x = torch.randn(8, 64)
    with torch.inference_mode():
        torch.testing.assert_close(torch.compile(model.head)(x), x @ model.embed.weight.T, rtol=1e-5, atol=1e-4)
