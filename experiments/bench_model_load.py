"""Cold vs cached load of the embedded model -> results/model_load.json.

Cold: a fresh cache folder (assemble GGUF, de-quantize, convert tokenizer, save safetensors).
Cached: the same folder again. Both in one run, so the ratio is what the README quotes.

    python -m experiments.bench_model_load
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from hatcat.config import EMBEDDED_DEFAULT
from hatcat.model import load_model
from hatcat.paths import RESULTS

OUT = RESULTS / "model_load.json"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cold = load_model(EMBEDDED_DEFAULT, cache_dir=Path(tmp))
        del cold.model
        warm = load_model(EMBEDDED_DEFAULT, cache_dir=Path(tmp))
        assert not cold.from_cache and warm.from_cache
        prompt = warm.tokenizer("The capital of France is", return_tensors="pt").to(warm.device)
        start = time.perf_counter()
        with torch.no_grad():
            out = warm.model.generate(**prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False)
        generate_s = time.perf_counter() - start
    result = {
        "model": EMBEDDED_DEFAULT,
        "device": str(warm.device),
        "dtype": str(warm.dtype).removeprefix("torch."),
        "cold_load_s": round(cold.load_seconds, 2),
        "cached_load_s": round(warm.load_seconds, 2),
        "speedup": round(cold.load_seconds / warm.load_seconds, 1),
        "generate_tokens_per_s": round(32 / generate_s, 1),
        "sample": warm.tokenizer.decode(out[0, prompt.input_ids.shape[1] :], skip_special_tokens=True),
        "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
