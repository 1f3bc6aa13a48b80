"""Loading the length data (AlpacaEval; Chatbot Arena prompts from arena-bench-v1) and the deterministic
by-prompt train/validation split.

The split is by prompt (never by row): every length any model gave for a validation prompt stays out
of training, so the benchmark can replay validation prompts the proxy has never seen.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DATA_DIR = Path(__file__).resolve().parent / "data" / "alpaca_eval"
DEFAULT_PROMPTS_PATH = PACKAGE_DATA_DIR / "prompts.jsonl"
DEFAULT_LENGTHS_PATH = PACKAGE_DATA_DIR / "lengths.csv.gz"
DEFAULT_TARGET_MODEL = "Meta-Llama-3-8B-Instruct"
ARENA_DATA_DIR = Path(__file__).resolve().parent / "data" / "arena_bench_v1"
ARENA_PROMPTS_PATH = ARENA_DATA_DIR / "prompts.jsonl"
ARENA_LENGTHS_PATH = ARENA_DATA_DIR / "lengths.csv.gz"
ARENA_TARGET_MODEL = "gpt-4-0314"  # a GPT-4-class model, answering every Arena prompt here
VALIDATION_PERCENT = 20


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    prompt: str
    prompt_tokens: int
    source: str = ""


def load_prompts(path: str | Path = DEFAULT_PROMPTS_PATH) -> list[Prompt]:
    prompts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            prompts.append(Prompt(row["prompt_id"], row["prompt"], int(row.get("prompt_tokens", 0)),
                                  row.get("source", "")))
    return prompts


def load_output_tokens(path: str | Path = DEFAULT_LENGTHS_PATH) -> dict[str, dict[str, int]]:
    """Returns {prompt_id: {model: output_tokens}}."""
    opener = gzip.open if str(path).endswith(".gz") else open
    lengths: dict[str, dict[str, int]] = {}
    with opener(path, "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            lengths.setdefault(row["prompt_id"], {})[row["model"]] = int(row["output_tokens"])
    return lengths


def is_validation_prompt(prompt_id: str, validation_percent: int = VALIDATION_PERCENT) -> bool:
    # A hash of the id (not a seeded shuffle) keeps each prompt's side stable when prompts are added.
    bucket = int(hashlib.sha256(prompt_id.encode("utf-8")).hexdigest()[:8], 16) % 100
    return bucket < validation_percent


def split_prompt_ids(prompt_ids=None, validation_percent: int = VALIDATION_PERCENT) -> tuple[list[str], list[str]]:
    """Deterministic 80/20 split by prompt: returns (train_ids, validation_ids), each sorted.

    With no argument, splits the bundled AlpacaEval prompts.
    """
    if prompt_ids is None:
        prompt_ids = [p.prompt_id for p in load_prompts()]
    train, validation = [], []
    for pid in sorted(set(prompt_ids)):
        (validation if is_validation_prompt(pid, validation_percent) else train).append(pid)
    return train, validation


def load_arena_prompts() -> list[Prompt]:
    """The 298 Chatbot Arena prompts of arena-bench-v1 (longer, more code and maths than AlpacaEval's)."""
    return load_prompts(ARENA_PROMPTS_PATH)


def load_arena_output_tokens() -> dict[str, dict[str, int]]:
    """{prompt_id: {model: output_tokens}} for the Arena prompts (18 models)."""
    return load_output_tokens(ARENA_LENGTHS_PATH)


def split_arena_prompt_ids(validation_percent: int = VALIDATION_PERCENT) -> tuple[list[str], list[str]]:
    """The Arena prompts split by the same id hash as split_prompt_ids: (train_ids, validation_ids).

    The held-out side is what the SSJF bench replays; training on Arena uses only the train side."""
    return split_prompt_ids([p.prompt_id for p in load_arena_prompts()], validation_percent)


def prompt_text_hash(prompt_text: str) -> str:
    """Stable id for a prompt's text; used to recognise prompts an artifact was trained on."""
    return hashlib.sha256(prompt_text.encode("utf-8")).hexdigest()[:16]


def median_log_output_tokens(lengths_by_model: dict[str, int], exclude_model: str | None = None) -> float:
    values = sorted(math.log1p(n) for m, n in lengths_by_model.items() if m != exclude_model)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


# Arena model names that are the same model as an AlpacaEval head under another spelling: with shared heads
# their Arena lengths train (and serving under either name reads) the AlpacaEval model's head. Identical
# names need no entry. Only unambiguous pairs: "gpt-3.5-turbo" (which snapshot?) and "claude-1" stay apart.
ARENA_MODEL_ALIASES = {"gpt-4-0314": "gpt4_0314", "gpt-4-1106-preview": "gpt4_1106_preview"}
# An open model kept out of the shipped artifact's training data (no head, not in any consensus), so the
# learning-from-traffic demonstration (predictor.demo) starts from a model the predictor has never seen,
# as a user's own served model would be.
DEMO_MODEL = "Mistral-7B-Instruct-v0.1"

SOURCE_ALPACA = "alpaca_eval"
SOURCE_ARENA = "arena"


@dataclass(frozen=True)
class Source:
    """One bundled dataset: its prompts, {prompt_id: {model: output_tokens}}, and the model it is scored on."""
    name: str
    prompts: list[Prompt]
    lengths: dict[str, dict[str, int]]
    target_model: str

    def split(self) -> tuple[list[str], list[str]]:
        return split_prompt_ids([p.prompt_id for p in self.prompts])

    def by_id(self) -> dict[str, Prompt]:
        return {p.prompt_id: p for p in self.prompts}


def load_sources() -> dict[str, Source]:
    """Both bundled datasets, keyed by source name (AlpacaEval first)."""
    return {
        SOURCE_ALPACA: Source(SOURCE_ALPACA, load_prompts(), load_output_tokens(), DEFAULT_TARGET_MODEL),
        SOURCE_ARENA: Source(SOURCE_ARENA, load_arena_prompts(), load_arena_output_tokens(), ARENA_TARGET_MODEL),
    }
