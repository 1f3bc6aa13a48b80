"""Benchmark workloads from real data: AlpacaEval prompts with real output lengths, Azure arrival times."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

AZURE_DIR = Path(__file__).resolve().parent / "data" / "azure_llm_2023"
LENGTH_MODEL = "Meta-Llama-3-8B-Instruct"


@dataclass(frozen=True)
class BenchRequest:
    prompt_id: str
    prompt: str
    prompt_tokens: int
    true_output_tokens: int  # what the answer will be (already within max_tokens)
    max_tokens: int | None = None  # what the client sends as max_tokens (None: nothing)


def validation_requests(count: int, max_model_len: int = 2048, length_model: str = LENGTH_MODEL) -> list[BenchRequest]:
    """`count` requests cycling through the validation prompts the proxy never trained on, with the real
    answer length of `length_model` (capped to fit the context)."""
    from predictor.data import load_output_tokens, load_prompts, split_prompt_ids

    _train, validation = split_prompt_ids()
    lengths = load_output_tokens()
    prompts = {p.prompt_id: p for p in load_prompts()}
    pool = [prompts[pid] for pid in validation if length_model in lengths.get(pid, {})]
    requests = []
    for index in range(count):
        prompt = pool[index % len(pool)]
        room = max_model_len - 64 - prompt.prompt_tokens  # chat template and tokenizer slack
        true_length = max(1, min(lengths[prompt.prompt_id][length_model], room))
        # A client that names no cap of its own gets the context's room, as vLLM gives it: a cap that tells
        # the queue policy nothing about the answer's length.
        requests.append(BenchRequest(prompt.prompt_id, prompt.prompt, prompt.prompt_tokens, true_length,
                                     max_tokens=room))
    return requests


def azure_arrival_offsets(trace: str, count: int) -> np.ndarray:
    """Seconds since the first request for the first `count` requests of an Azure trace."""
    stamps = []
    with open(AZURE_DIR / f"{trace}.csv") as f:
        for row in csv.DictReader(f):
            stamps.append(datetime.fromisoformat(row["TIMESTAMP"][:26]).timestamp())
            if len(stamps) >= count:
                break
    stamps = np.array(stamps)
    return stamps - stamps[0]


def scaled_arrivals(trace: str, count: int, mean_rate_per_s: float) -> tuple[np.ndarray, float]:
    """Arrival offsets rescaled to a mean rate; returns (offsets, time scale applied to the trace)."""
    offsets = azure_arrival_offsets(trace, count)
    native_rate = (count - 1) / offsets[-1] if offsets[-1] > 0 else mean_rate_per_s
    time_scale = native_rate / mean_rate_per_s
    return offsets * time_scale, time_scale
