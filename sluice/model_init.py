"""Build Sluice's default model: a small random-weight Llama with a real tokenizer.

No model weights can be downloaded on the development and CI machines, yet the
serving path (tokenization, continuous batching, KV cache, timing, token
counts) should be exercised for real.  A tiny Llama-architecture model with
random weights and the Mistral-7B v0.1 SentencePiece tokenizer (shipped inside
``mistral_common``, a vLLM dependency) gives exactly that: outputs are
gibberish, everything around them is real.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "sluice-tiny-llama"

# Mistral's [INST] format, the template the tokenizer was trained with.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '[INST] ' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'user' %}{% if loop.index0 == 0 or messages[loop.index0 - 1]['role'] != 'system' %}{{ '[INST] ' }}{% endif %}{{ message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)

# Small enough to run on two CPU cores at interactive speed; head_dim 64 is a
# size every vLLM attention backend supports.
TINY_LLAMA_SHAPE = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)


def sentencepiece_model_path() -> Path:
    import mistral_common

    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not path.exists():
        raise FileNotFoundError(f"Mistral-7B v0.1 tokenizer not found at {path}")
    return path


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").exists() and (path / "tokenizer_config.json").exists()


def build_default_model(out_dir: Path, *, seed: int = 0, force: bool = False) -> Path:
    """Write the tiny random Llama and its tokenizer to ``out_dir``; return it."""
    out_dir = Path(out_dir)
    if is_model_dir(out_dir) and not force:
        log.info("default model already present at %s", out_dir)
        return out_dir
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tmp_dir = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)

    # transformers converts a SentencePiece model into a fast tokenizer when it
    # loads one from a directory, so stage the .model file with a config first.
    shutil.copy(sentencepiece_model_path(), tmp_dir / "tokenizer.model")
    (tmp_dir / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": False})
    )
    tokenizer = AutoTokenizer.from_pretrained(tmp_dir)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(tmp_dir)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        torch_dtype="bfloat16",
        tie_word_embeddings=False,
        **TINY_LLAMA_SHAPE,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(tmp_dir, safe_serialization=True)
    (tmp_dir / "sluice_model.json").write_text(
        json.dumps({"name": DEFAULT_MODEL_NAME, "kind": "random-weight tiny llama", "seed": seed}, indent=2)
    )
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp_dir.rename(out_dir)
    log.info("wrote default model to %s", out_dir)
    return out_dir
