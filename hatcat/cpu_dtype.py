"""The CPU dtype by measurement: time the loaded model's own decode step in fp32 and in bf16, once per machine.

Whether bf16 pays on a CPU is not readable from its flags: on an Intel Xeon with AMX plain fp32
decoding measured 1.15x faster than bf16, on an AMD CPU with AVX512-BF16 bf16 was 1.9x faster.
So with `HATCAT_DTYPE=auto` on a CPU the model is loaded in fp32 and a bf16 copy is timed
against it: `ROUNDS` interleaved rounds of `STEPS` single-token KV-cached forwards each, the
faster dtype's best round wins, and bf16 must win by `MARGIN` (fp32 is exact, so a tie keeps
it). The answer is cached in `<cache>/cpu-dtype.json` per CPU model, thread count, torch
version and model, so later starts read it (a few seconds the first time for the 270M model).
Models above `MAX_MEASURED_PARAMS` are not copied for timing: they follow the flag rule.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import platform
import time
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

STEPS = 4
ROUNDS = 2
MARGIN = 1.05  # bf16 must be this much faster per step to be chosen
MAX_MEASURED_PARAMS = 2_000_000_000  # a bf16 copy of a larger model would cost too much memory at start-up
CACHE_FILE = "cpu-dtype.json"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_native_bf16() -> bool:
    """The flag rule: AVX512-BF16 or AMX-BF16 in /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def machine_key(model_name: str) -> str:
    return f"{cpu_name()} | threads {torch.get_num_threads()} | torch {torch.__version__} | {model_name}"


def choose(model: nn.Module, model_name: str, cache_dir: Path) -> tuple[torch.dtype, dict[str, object]]:
    """The CPU dtype for `model` (loaded in fp32) and the record that decided it (cached per machine)."""
    if sum(p.numel() for p in model.parameters()) > MAX_MEASURED_PARAMS:
        dtype = torch.bfloat16 if has_native_bf16() else torch.float32
        return dtype, {"dtype": str(dtype).removeprefix("torch."), "rule": "cpu flags (model too large to time twice)"}
    path = Path(cache_dir) / CACHE_FILE
    key = machine_key(model_name)
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached.get(key), dict) and cached[key].get("dtype") in ("float32", "bfloat16"):
        record = cached[key]
    else:
        record = measure(model)
        cached[key] = record
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(cached, indent=1) + "\n")
        except OSError as err:
            log.warning("cannot cache the CPU dtype measurement in %s: %s", path, err)
    return getattr(torch, record["dtype"]), record


@torch.inference_mode()
def measure(model: nn.Module) -> dict[str, object]:
    """Seconds per decode step of `model` (fp32) and of a bf16 copy, interleaved; the faster by `MARGIN` wins."""
    log.warning("timing the decode step in fp32 and bf16 once for this machine (HATCAT_DTYPE=auto on CPU)")
    half = copy.deepcopy(model).to(torch.bfloat16)
    device = next(model.parameters()).device
    prompt = torch.arange(100, 116, device=device)[None]  # any 16 ordinary token ids
    best = {"float32": float("inf"), "bfloat16": float("inf")}
    try:
        for _ in range(ROUNDS):
            for name, candidate in (("float32", model), ("bfloat16", half)):
                best[name] = min(best[name], _step_seconds(candidate, prompt))
    finally:
        del half
    dtype = "bfloat16" if best["float32"] > MARGIN * best["bfloat16"] else "float32"
    return {
        "dtype": dtype,
        "rule": f"timed decode step (bf16 chosen only when {MARGIN}x faster)",
        "float32_step_s": round(best["float32"], 5),
        "bfloat16_step_s": round(best["bfloat16"], 5),
        "bf16_speedup": round(best["float32"] / best["bfloat16"], 3),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _step_seconds(model: nn.Module, prompt: torch.Tensor) -> float:
    """Median seconds of `STEPS` single-token forwards after a 16-token prefill (KV cache, last logits only)."""
    # recent transformers name the KV-cache argument `cache` (`past_key_values` before)
    kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    times = []
    for _ in range(STEPS):
        start = time.perf_counter()
        out = model(input_ids=token, use_cache=True, logits_to_keep=1, **{kwarg: cache})
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
