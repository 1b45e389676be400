"""The loader: embedded Gemma 3, cache reuse, a second architecture, clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import Gemma3Config, Gemma3ForConditionalGeneration

from hatcat.engine import Engine
from hatcat.model import EMBEDDED_MODELS, ModelLoadError, _converted_gguf, decoder_layers, hidden_size, load_model


def greedy(engine: Engine, prompt: str, tokens: int = 16) -> str:
    inputs = engine.tokenizer(prompt, return_tensors="pt").to(engine.loaded.device)
    with torch.no_grad():
        out = engine.model.generate(**inputs, max_new_tokens=tokens, do_sample=False)
    return engine.tokenizer.decode(out[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)


def test_embedded_gemma_loads_and_greedy_generation_repeats(engine: Engine) -> None:
    assert type(engine.model).__name__ == "Gemma3ForCausalLM"
    assert len(engine.loaded.layers) == 18 and engine.loaded.hidden_size == 640
    first = greedy(engine, "The capital of France is")
    assert first.strip(), "the model produced no text"
    assert greedy(engine, "The capital of France is") == first
    assert "Paris" in first or "France" in first  # a working model, not noise


def test_second_load_reuses_the_converted_cache(engine: Engine, settings) -> None:
    again = load_model(settings.model_name, cache_dir=settings.cache_dir, device="cpu", dtype="float32")
    assert again.from_cache
    source = next((settings.cache_dir / "converted").glob("*/hatcat-source.json"))
    assert json.loads(source.read_text())["sha256"] in {m.sha256 for m in EMBEDDED_MODELS.values()}


@pytest.mark.slow
def test_smollm2_loads_through_the_same_loader(settings) -> None:
    smol = load_model("embedded:smollm2-135m", cache_dir=settings.cache_dir, device="cpu")
    assert type(smol.model).__name__ == "LlamaForCausalLM"
    assert len(smol.layers) == smol.model.config.num_hidden_layers == 30
    assert smol.hidden_size == 576


def test_layer_accessor_reaches_gemma3_multimodal_language_model() -> None:
    # The 4B production class cannot be downloaded here; a tiny randomly initialised instance of
    # the same class has the same module tree, which is all the accessor depends on.
    config = Gemma3Config(
        text_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "vocab_size": 512,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 28,
            "patch_size": 14,
        },
        mm_tokens_per_image=4,
    )
    model = Gemma3ForConditionalGeneration(config)
    assert len(decoder_layers(model)) == 3
    assert hidden_size(model) == 64


def test_missing_folder_is_refused_with_its_name(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no-such-model"):
        load_model(str(tmp_path / "no-such-model"))


def test_model_that_is_not_a_causal_lm_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ModelLoadError, match="not a causal language model"):
        load_model(str(tmp_path))


def test_unknown_embedded_name_lists_the_known_ones() -> None:
    with pytest.raises(ModelLoadError, match="embedded:gemma-3-270m"):
        load_model("embedded:gpt-17")


def test_gguf_with_unexpected_checksum_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "tampered.gguf"
    fake.write_bytes(b"GGUF not really")
    with pytest.raises(ModelLoadError, match="expected"):
        _converted_gguf(fake, EMBEDDED_MODELS["gemma-3-270m"].sha256, tmp_path)
