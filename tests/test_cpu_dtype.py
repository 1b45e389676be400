"""The CPU dtype is decided by timing the model's decode step in fp32 and bf16, once per machine."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hatcat import cpu_dtype
from hatcat.engine import Engine


def test_cpu_dtype_is_timed_once_then_read_from_the_cache(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / cpu_dtype.CACHE_FILE).write_text("{not json")  # a corrupt cache is measured again
    model = engine.model
    original = next(model.parameters()).dtype
    dtype, record = cpu_dtype.choose(model, "test-model", tmp_path)
    assert next(model.parameters()).dtype == original  # timing used a copy: the model itself is untouched
    assert dtype in (torch.float32, torch.bfloat16) and record["dtype"] == str(dtype).removeprefix("torch.")
    assert record["float32_step_s"] > 0 and record["bfloat16_step_s"] > 0
    faster = record["float32_step_s"] > cpu_dtype.MARGIN * record["bfloat16_step_s"]
    assert (dtype == torch.bfloat16) == faster
    cached = json.loads((tmp_path / cpu_dtype.CACHE_FILE).read_text())
    assert cached[cpu_dtype.machine_key("test-model")] == record
    again_dtype, again = cpu_dtype.choose(model, "test-model", tmp_path)
    assert (again_dtype, again) == (dtype, record)  # the cached measurement, not a new one
