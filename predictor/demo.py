"""Learning from traffic, shown on data: a served model's real answer lengths go through the same path
live traffic takes (``record_completion`` into a Redis list, then ``retrain``), and the predictor is scored
on held-out Arena prompts for that model before and after.

The traffic is the Arena *train* split's lengths of one model (by default ``D.DEMO_MODEL``, which the
shipped artifact never saw: no head, not in any consensus — as a user's own model would be); the score is
on the Arena *validation* prompts, which neither the artifact nor the traffic contains. Usage::

    sluice predictor retrain-demo --model Mistral-7B-Instruct-v0.1 --redis-url redis://127.0.0.1:6379/0

It writes a fresh Redis list (``sluice:predictor:feedback:demo:<random>``, deleted afterwards) and a
throw-away registry; it announces nothing in Redis and never touches the serving log or registry.
"""
from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

from predictor import data as D
from predictor.feedback import FEEDBACK_KEY, record_completion, retrain


def demo_feedback_key() -> str:
    return f"{FEEDBACK_KEY}:demo:{uuid.uuid4().hex}"


def traffic_rows(source: D.Source, model: str, prompt_ids, limit: int | None = None) -> list[tuple[D.Prompt, int]]:
    """(prompt, the model's real output tokens) for the prompts among ``prompt_ids`` the model answered."""
    by_id = source.by_id()
    rows = [(by_id[i], source.lengths[i][model]) for i in prompt_ids if model in source.lengths.get(i, {})]
    return rows[:limit] if limit is not None else rows


def held_out_metrics(predictor, source: D.Source, model: str, prompt_ids) -> dict:
    from predictor.evaluation import target_and_unknown_metrics

    rows = [p for p, _ in traffic_rows(source, model, prompt_ids)]
    return target_and_unknown_metrics(predictor, rows, source.lengths, model)


def run_demo(redis_client, model: str = D.DEMO_MODEL, *, base_artifact: str | Path | None = None,
             work_dir: str | Path | None = None, limit: int | None = None, fine_tune_encoder: bool = False,
             feedback_weight: float = 1.0, epochs: int = 30) -> dict:
    """Feeds ``model``'s Arena train-split lengths through the feedback log and ``retrain``; returns the
    held-out (Arena validation) metrics for that model before and after, both int8 as served."""
    from predictor.predictor import DEFAULT_ARTIFACT_DIR, LengthPredictor

    base_artifact = Path(base_artifact) if base_artifact else DEFAULT_ARTIFACT_DIR
    arena = D.load_sources()[D.SOURCE_ARENA]
    train_ids, validation_ids = arena.split()
    traffic = traffic_rows(arena, model, train_ids, limit)
    if not traffic:
        raise ValueError(f"no Arena train prompt has a length for {model!r}")
    base = LengthPredictor.load(base_artifact)
    before = held_out_metrics(base, arena, model, validation_ids)
    key = demo_feedback_key()
    own_dir = tempfile.TemporaryDirectory(prefix="predictor-demo-") if work_dir is None else None
    registry_root = Path(work_dir or own_dir.name)
    try:
        for prompt, output_tokens in traffic:  # what the API records when a request completes
            record_completion(redis_client, prompt_text=prompt.prompt, served_model=model,
                              prompt_tokens=prompt.prompt_tokens, output_tokens=output_tokens,
                              keep_prompt_text=True, key=key, max_entries=len(traffic))
        meta = retrain(redis_client, base_artifact, registry_root, key=key, version="demo-" + key[-8:],
                       make_current=False, fine_tune_encoder=fine_tune_encoder, epochs=epochs,
                       feedback_weight=feedback_weight)
        after = held_out_metrics(LengthPredictor.load(registry_root / "versions" / meta["version"]),
                                 arena, model, validation_ids)
    finally:
        redis_client.delete(key)
        if own_dir is not None:
            own_dir.cleanup()
    return {
        "model": model,
        "base_version": base.version,
        "had_head_before": base.model.head_index(model) != 0,
        "traffic_prompts": len(traffic),
        "held_out_prompts": before["n"],
        "retrain": meta["retrain"],
        "before": before,
        "after": after,
        "tau_gain": round(after["kendall_tau"] - before["kendall_tau"], 4),
    }
