"""Held-out scores per source: each dataset's validation prompts against its own target model, both as
that model (its head mixed into the consensus) and as an unknown model (the mean of all heads).

Pure bookkeeping around ``LengthPredictor.predict``; the CLI's ``eval`` and training print these."""
from __future__ import annotations

from predictor import data as D
from predictor.metrics import length_prediction_metrics


def scored_prompts(source: D.Source, prompt_ids, target_model: str, skip_hashes=frozenset()) -> tuple[list[D.Prompt], int]:
    """The prompts among ``prompt_ids`` the target model answered, minus those whose text hash is in
    ``skip_hashes`` (prompts an artifact was trained on); returns (prompts, number skipped)."""
    by_id = source.by_id()
    rows, skipped = [], 0
    for pid in prompt_ids:
        if target_model not in source.lengths.get(pid, {}):
            continue
        if D.prompt_text_hash(by_id[pid].prompt) in skip_hashes:
            skipped += 1
            continue
        rows.append(by_id[pid])
    return rows, skipped


def target_and_unknown_metrics(predictor, prompts: list[D.Prompt], lengths, target_model: str) -> dict:
    """Metrics of the served-model prediction and of the unknown-model prediction (mean of heads)."""
    actual = [lengths[p.prompt_id][target_model] for p in prompts]
    texts = [p.prompt for p in prompts]
    served = length_prediction_metrics(predictor.predict(texts, served_model=target_model), actual)
    unknown = length_prediction_metrics(predictor.predict(texts, served_model=None), actual)
    unknown.pop("n")
    return {**served, "target_model": target_model, "unknown_model": unknown}


def per_source_metrics(predictor, sources: dict[str, D.Source], *, include_trained: bool = False,
                       targets: dict[str, str] | None = None) -> dict:
    """{source: metrics} on each source's validation split (``targets`` overrides a source's target model)."""
    trained = frozenset() if include_trained else frozenset(predictor.meta.get("trained_prompt_hashes", []))
    result = {}
    for name, source in sources.items():
        target = (targets or {}).get(name, source.target_model)
        rows, skipped = scored_prompts(source, source.split()[1], target, trained)
        if not rows:
            result[name] = {"target_model": target, "n": 0, "skipped_trained_prompts": skipped}
            continue
        result[name] = {**target_and_unknown_metrics(predictor, rows, source.lengths, target),
                        "skipped_trained_prompts": skipped}
    return result
