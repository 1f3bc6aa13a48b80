"""Learning from traffic: a bounded Redis log of completions and a head-only retrain from it.

Privacy choice: with ``keep_prompt_text=False`` the log stores no text, only the serving encoder's
pooled 384-d features (float16, base64; ~1 KB) stamped with the artifact version that produced them,
plus a truncated SHA-256 of the text for de-duplication. Features cannot be fed back through a *new*
encoder, so retraining keeps the base artifact's encoder frozen and re-fits only the head — which is
also what makes retraining take seconds instead of minutes. Entries whose features came from another
version are skipped (and counted). With ``keep_prompt_text=True`` the text is kept and re-encoded.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import math
import time
from pathlib import Path

import numpy as np

from predictor import data as D

FEEDBACK_KEY = "sluice:predictor:feedback"
DEFAULT_MAX_ENTRIES = 50_000
# A served model with no head of its own gets one once the log holds this many of its completions (fewer
# teach the consensus head); the new head starts as the mean of the others (predictor.model.add_heads).
MIN_ENTRIES_FOR_NEW_HEAD = 20


def encode_embedding(vector) -> str:
    return base64.b64encode(np.asarray(vector, dtype=np.float16).tobytes()).decode("ascii")


def decode_embedding(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.float16).astype(np.float32)


def feedback_entry(*, prompt_text: str, served_model: str | None, prompt_tokens: int, output_tokens: int,
                   keep_prompt_text: bool, predictor=None) -> dict:
    entry = {
        "ts": time.time(),
        "served_model": served_model,
        "prompt_tokens": int(prompt_tokens),
        "output_tokens": int(output_tokens),
        "prompt_hash": D.prompt_text_hash(prompt_text),
    }
    if keep_prompt_text:
        entry["prompt_text"] = prompt_text
    elif predictor is not None:
        entry["embedding"] = encode_embedding(predictor.pooled_embeddings([prompt_text])[0])
        entry["embedding_version"] = predictor.version
    return entry


def record_completion(redis_client, *, prompt_text: str, served_model: str | None, prompt_tokens: int,
                      output_tokens: int, keep_prompt_text: bool, max_entries: int = DEFAULT_MAX_ENTRIES,
                      predictor=None, key: str = FEEDBACK_KEY) -> dict:
    """Appends one completed request to the bounded log (LPUSH + LTRIM in one transaction).

    Without prompt text, pass ``predictor`` so the entry carries features retraining can use; with
    neither, the entry only counts toward length statistics. ``redis_client`` is a sync redis-py
    client; from asyncio code call this via ``asyncio.to_thread`` (it may run the encoder).
    """
    entry = feedback_entry(prompt_text=prompt_text, served_model=served_model, prompt_tokens=prompt_tokens,
                           output_tokens=output_tokens, keep_prompt_text=keep_prompt_text, predictor=predictor)
    pipe = redis_client.pipeline(transaction=True)
    pipe.lpush(key, json.dumps(entry, separators=(",", ":")))
    pipe.ltrim(key, 0, max_entries - 1)
    pipe.execute()
    return entry


def read_feedback(redis_client, key: str = FEEDBACK_KEY) -> list[dict]:
    return [json.loads(raw) for raw in redis_client.lrange(key, 0, -1)]


def retrain(redis_client, base_artifact: str | Path | None, out_root: str | Path, *,
            key: str = FEEDBACK_KEY, epochs: int = 30, feedback_weight: float = 1.0,
            version: str | None = None, make_current: bool = True, fine_tune_encoder: bool = False,
            encoder_epochs: int = 1, min_entries_for_new_head: int = MIN_ENTRIES_FOR_NEW_HEAD) -> dict:
    """Re-fits on the base artifact's training data plus the feedback log; publishes a new version.

    By default the encoder stays frozen and only the head is re-fit (~30 s on 2 cores), which uses every
    entry: prompt text where it was kept, the serving encoder's features otherwise.  With
    ``fine_tune_encoder`` the whole model continues fine-tuning from the base for ``encoder_epochs``
    epochs; that needs prompt text (``keep_prompt_text``), and feature-only entries are skipped, since
    features belong to the encoder being changed.

    ``out_root`` is the registry root (the CLI passes ``settings.predictor_registry_dir``).
    ``base_artifact`` None: the registry's current version (or the shipped default).
    A served model without a head gets one when the log holds ``min_entries_for_new_head`` of its
    completions. Base data is what the base artifact was trained on (its ``train_config``: AlpacaEval's
    train split, plus Arena's with its weight). Returns the new version's meta.json contents.
    """
    from collections import Counter
    from dataclasses import fields

    from predictor.evaluation import per_source_metrics
    from predictor.model import add_heads
    from predictor.predictor import LengthPredictor
    from predictor.registry import ModelRegistry
    from predictor.train import TrainConfig, fine_tune, training_set, write_artifact

    registry = ModelRegistry(out_root)
    base_dir = Path(base_artifact) if base_artifact else registry.current_artifact_dir()
    base = LengthPredictor.load(base_dir, quantize=False)  # the head must stay trainable
    model, tokenizer = base.model, base.tokenizer

    entries = read_feedback(redis_client, key)
    counts = Counter(e.get("served_model") for e in entries if e.get("served_model"))
    new_heads = add_heads(model, sorted(m for m, n in counts.items() if n >= min_entries_for_new_head))
    model_names = model.model_names

    # The base artifact's data recipe; artifacts older than the Arena data trained on AlpacaEval alone.
    known = {f.name for f in fields(TrainConfig)}
    base_cfg = TrainConfig(**{**{"arena_weight": 0, "holdout_models": ""},
                              **{k: v for k, v in base.meta.get("train_config", {}).items() if k in known}})
    sources = D.load_sources()
    train_ids = {name: src.split()[0] for name, src in sources.items()}
    base_texts, base_y, _ = training_set(sources, train_ids, base_cfg, model_names)
    text_rows, text_y, feature_rows, feature_y = [], [], [], []
    skipped = 0
    for entry in entries:
        row = np.full(1 + len(model_names), np.nan, dtype=np.float32)
        # A model without its own head teaches the consensus head: order is what we need from it.
        column = model.head_index(entry.get("served_model"))
        row[column] = math.log1p(entry["output_tokens"])
        if "prompt_text" in entry:
            text_rows.append(entry["prompt_text"])
            text_y.append(row)
        elif "embedding" in entry and entry.get("embedding_version") == base.version and not fine_tune_encoder:
            feature_rows.append(decode_embedding(entry["embedding"]))
            feature_y.append(row)
        else:
            skipped += 1

    if fine_tune_encoder:
        if not text_rows:
            raise ValueError(f"no feedback entry with prompt text among {len(entries)}: fine-tuning the encoder "
                             "needs SLUICE_KEEP_PROMPT_TEXT=true (re-fit the head alone instead)")
        repeats = _repeats(feedback_weight)
        fine_tune(model, tokenizer, base_texts + text_rows * repeats,
                  np.concatenate([base_y, np.tile(np.array(text_y, dtype=base_y.dtype), (repeats, 1))]),
                  TrainConfig(epochs=encoder_epochs))
    else:
        _refit_head(model, tokenizer, base, base_texts, base_y, text_rows, text_y, feature_rows, feature_y,
                    epochs=epochs, feedback_weight=feedback_weight)

    model.eval()
    metrics = per_source_metrics(LengthPredictor(model, tokenizer, base.meta), sources)
    version = version or dt.datetime.now(dt.timezone.utc).strftime("v%Y%m%d-%H%M%S-%f")
    meta = dict(base.meta)
    meta.update({
        "version": version,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "parent_version": base.version,
        "retrain": {"head_only": not fine_tune_encoder,
                    "epochs": encoder_epochs if fine_tune_encoder else epochs, "feedback_entries": len(entries),
                    "used_text": len(text_rows), "used_features": len(feature_rows), "skipped": skipped,
                    "new_heads": new_heads},
        "metrics": {"validation": {"fp32": metrics}},
    })
    meta["trained_prompt_hashes"] = sorted(set(base.meta.get("trained_prompt_hashes", []))
                                           | {D.prompt_text_hash(t) for t in text_rows})
    meta["training_data"] = dict(base.meta.get("training_data", {}),
                                 feedback_records=len(text_rows) + len(feature_rows))
    # write_artifact renames a finished directory into place, so publishing only moves the pointer.
    write_artifact(model, tokenizer, meta, registry.version_dir(version))
    registry.publish(registry.version_dir(version), version, make_current=make_current,
                     redis_client=redis_client if make_current else None)
    return meta


def _repeats(feedback_weight: float) -> int:
    """The weight of the traffic against the base data, as repetitions (the losses are means over rows)."""
    return max(1, round(feedback_weight))


def _refit_head(model, tokenizer, base, base_texts, base_y, text_rows, text_y, feature_rows, feature_y, *,
                epochs: int, feedback_weight: float) -> None:
    """Frozen encoder: compute features once, then many cheap epochs over the head alone."""
    import torch

    from predictor.train import TrainConfig, training_loss

    def encode(texts: list[str]) -> torch.Tensor:
        if not texts:
            return torch.empty(0, model.head.in_features)
        with torch.inference_mode():
            chunks = []
            for start in range(0, len(texts), 64):
                batch = tokenizer(texts[start:start + 64], truncation=True, max_length=base.max_length,
                                  padding=True, return_tensors="pt")
                chunks.append(model.pooled(batch["input_ids"], batch["attention_mask"]))
            return torch.cat(chunks)

    width = base_y.shape[1]
    feedback_features = torch.cat([encode(text_rows),
                                   torch.tensor(np.array(feature_rows, dtype=np.float32)).reshape(-1, model.head.in_features)])
    feedback_targets = np.concatenate([np.array(text_y, dtype=np.float32).reshape(-1, width),
                                       np.array(feature_y, dtype=np.float32).reshape(-1, width)])
    # Only the outputs the traffic speaks about are re-fit (base rows anchor them); every other head stays as
    # the base had it, so the consensus (mean of heads) other models rely on does not drift. Base prompts
    # with no length for a re-fit output carry no signal and are not even encoded.
    trained = torch.zeros(width, dtype=torch.bool)
    trained[torch.tensor(sorted(set(np.nonzero(~np.isnan(feedback_targets))[1].tolist())), dtype=torch.long)] = True
    useful = ~np.isnan(base_y[:, trained.numpy()]).all(1)
    base_texts = [t for t, keep in zip(base_texts, useful) if keep]
    repeats = _repeats(feedback_weight)
    features = torch.cat([encode(base_texts), feedback_features.repeat(repeats, 1)])
    targets = torch.tensor(np.concatenate([base_y[useful], np.tile(feedback_targets, (repeats, 1))]))
    model.head.weight.register_hook(lambda grad: grad * trained.unsqueeze(1))
    model.head.bias.register_hook(lambda grad: grad * trained)

    cfg = TrainConfig()
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=5e-4, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=generator)
        for start in range(0, len(order), 64):
            idx = order[start:start + 64]
            loss = training_loss(model.head_outputs(features[idx]), targets[idx], cfg)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
