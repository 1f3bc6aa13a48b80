"""Benchmark workloads from real data: held-out AlpacaEval or Chatbot Arena prompts with a real model's
output lengths, Azure arrival times."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

AZURE_DIR = Path(__file__).resolve().parent / "data" / "azure_llm_2023"
LENGTH_MODEL = "Meta-Llama-3-8B-Instruct"
# Per prompt set: the model whose real answer lengths are the bench's true lengths.
LENGTH_MODELS = {"alpaca": LENGTH_MODEL, "arena": "gpt-4-0314"}
# The caps a capped client sends as max_tokens (what real clients commonly set).
CLIENT_CAPS = (64, 128, 256, 512)


@dataclass(frozen=True)
class BenchRequest:
    prompt_id: str
    prompt: str
    prompt_tokens: int
    true_output_tokens: int  # what the answer will be (already within max_tokens)
    max_tokens: int | None = None  # what the client sends as max_tokens (None: nothing)


def validation_requests(count: int, max_model_len: int = 2048, length_model: str = LENGTH_MODEL,
                        prompts: str = "alpaca", capped_share: float = 0.0, seed: int = 0) -> list[BenchRequest]:
    """`count` requests cycling through the held-out prompts of a prompt set (`alpaca` or `arena`) that the
    proxy never trained on, with the real answer length of `length_model` (capped to fit the context).

    A share `capped_share` of the requests (chosen with `seed`) comes from clients that send a max_tokens
    drawn from CLIENT_CAPS; their answer stops there. The rest send no cap and get the context's room."""
    from predictor import data

    if prompts == "alpaca":
        _train, held_out = data.split_prompt_ids()
        lengths, pool_prompts = data.load_output_tokens(), data.load_prompts()
    elif prompts == "arena":
        _train, held_out = data.split_arena_prompt_ids()
        lengths, pool_prompts = data.load_arena_output_tokens(), data.load_arena_prompts()
    else:
        raise ValueError(f"unknown prompt set {prompts!r} (alpaca or arena)")
    by_id = {p.prompt_id: p for p in pool_prompts}
    pool = [by_id[pid] for pid in held_out if length_model in lengths.get(pid, {})]
    if not pool:
        raise ValueError(f"no held-out {prompts} prompt has a length from {length_model!r}")
    rng = np.random.default_rng(seed)
    capped = rng.random(count) < capped_share
    caps = rng.choice(CLIENT_CAPS, size=count)
    requests = []
    for index in range(count):
        prompt = pool[index % len(pool)]
        room = max_model_len - 64 - prompt.prompt_tokens  # chat template and tokenizer slack
        # A client that names no cap of its own gets the context's room, as vLLM gives it: a cap that tells
        # the queue policy nothing about the answer's length. A capped client's answer stops at its cap.
        max_tokens = min(int(caps[index]), room) if capped[index] else room
        true_length = max(1, min(lengths[prompt.prompt_id][length_model], max_tokens))
        requests.append(BenchRequest(prompt.prompt_id, prompt.prompt, prompt.prompt_tokens, true_length,
                                     max_tokens=max_tokens))
    return requests


def azure_arrival_offsets(trace: str, count: int, start: int = 0) -> np.ndarray:
    """Seconds since the first of them for `count` requests of an Azure trace, from its `start`-th request."""
    stamps = []
    with open(AZURE_DIR / f"{trace}.csv") as f:
        for index, row in enumerate(csv.DictReader(f)):
            if index < start:
                continue
            stamps.append(datetime.fromisoformat(row["TIMESTAMP"][:26]).timestamp())
            if len(stamps) >= count:
                break
    stamps = np.array(stamps)
    return stamps - stamps[0]


def scaled_arrivals(trace: str, count: int, mean_rate_per_s: float, start: int = 0) -> tuple[np.ndarray, float]:
    """Arrival offsets of `count` trace requests from the `start`-th, rescaled to a mean rate; returns
    (offsets, time scale applied to the trace)."""
    offsets = azure_arrival_offsets(trace, count, start)
    native_rate = (count - 1) / offsets[-1] if offsets[-1] > 0 else mean_rate_per_s
    time_scale = native_rate / mean_rate_per_s
    return offsets * time_scale, time_scale
