"""A tiny randomly initialised Gemma 3 (2 blocks, hidden 64), a byte-level tokenizer trained here and a
random probe pack: the hot path (scheduler, monitor, steering, streaming) in seconds, with no download
and no cache. The fast tier's stand-in for the embedded model; its text is noise, its mechanics real."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

from hatcat.batching import Scheduler
from hatcat.concepts import load_pack
from hatcat.config import Settings
from hatcat.engine import Engine
from hatcat.generation import Finished, GenerationSettings, MonitoredFinish, MonitoredToken
from hatcat.model import LoadedModel
from hatcat.monitor import TokenRecord
from hatcat.paths import SAFETY_MELD
from hatcat.steering import Steering
from tests.support import tiny_probe_pack

HIDDEN, BLOCKS, TAP = 64, 2, 1
SPECIALS = ["<pad>", "<eos>", "<bos>", "<end_of_turn>"]
CORPUS = [
    "The weather was mild, so we walked to the market, bought bread and talked about the week.",
    "Tell me about your dog. Why is the sky blue? List three fruits: apple, pear, plum.",
    "A lighthouse keeper finds a message in a bottle; the sea is calm and the stars are out.",
    "Fear, music and deception: café, naïve, 東京, 🫨 and 𓀀 are here too.",
]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE (every byte a token, a few hundred merges), BOS added to a plain prompt, Gemma's specials."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    bos = tokenizer.token_to_id("<bos>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def tiny_model(vocab: int, seed: int = 0) -> Gemma3ForCausalLM:
    """A Gemma 3 text model in fp32 with random weights: one sliding-window block, one full block."""
    config = Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=BLOCKS,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=256,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    torch.manual_seed(seed)
    return Gemma3ForCausalLM(config).eval()


def tiny_loaded() -> LoadedModel:
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer))
    return LoadedModel("tiny:gemma3", model, tokenizer, torch.device("cpu"), torch.float32, 0.0, False)


def tiny_engine(folder: Path, settings: Settings | None = None) -> Engine:
    """An Engine on the tiny model with a random three-concept probe pack (Music, Deception, Fear) at block TAP."""
    loaded = tiny_loaded()
    concepts = load_pack(melds=[SAFETY_MELD])
    engine = Engine(settings or Settings.from_env(), loaded, concepts)
    pack = (concepts.id, concepts.checksum)
    engine.load_probes(tiny_probe_pack(folder, hidden=HIDDEN, layer=TAP, model=loaded.name, concept_pack=pack))
    return engine


def token_ids(events: list) -> list[int]:
    return [e.step.token_id for e in events if isinstance(e, MonitoredToken)]


def token_records(events: list) -> list[TokenRecord]:
    return [e.record for e in events if isinstance(e, MonitoredToken)]


def ending(events: list) -> Finished:
    """The `Finished` of a generation that ran to its end (its last event), checking that its steps'
    texts concatenate to the final text."""
    assert isinstance(events[-1], MonitoredFinish), events[-1:]
    finished = events[-1].finished
    assert "".join(e.step.text for e in events[:-1]) == finished.text
    return finished


def solo(engine: Engine, prompt: str, settings: GenerationSettings, steerings: tuple[Steering, ...] = ()) -> list:
    """The reference run: a `Scheduler(max_batch=1)` of its own on the engine's model, monitored."""
    reference = Scheduler(engine.model, engine.tokenizer, engine.exclusive, max_batch=1)
    return list(reference.submit(prompt, settings, steerings, engine.monitor, engine.vectors))
