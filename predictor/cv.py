"""K-fold cross-validation on the TRAIN prompts only (the validation split is never touched here).

Folds are by prompt and deterministic: fold = sha256("cv:" + prompt_id) % k. Each run fine-tunes one
model per (fold, seed), saves every head's out-of-fold log predictions (and, for weight averaging, the
fold model's weights) under ``--out``; ``summarize`` scores single runs, prediction ensembles, weight
soups and the own-head mix. Usage::

    .venv/bin/python -m predictor.cv run --name base --seeds 0 1 --out /tmp/predictor-cv
    .venv/bin/python -m predictor.cv summarize --out /tmp/predictor-cv --name base
    .venv/bin/python -m predictor.cv similarity --out /tmp/predictor-cv --name base   # head weighting
    .venv/bin/python -m predictor.cv distil --out /tmp/predictor-cv --name base --seeds 0 1   # ensemble -> student
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau

from predictor import data as D
from predictor.model import CONSENSUS_HEAD, load_base
from predictor.train import TrainConfig, fine_tune, target_matrix, training_set


def cv_fold(prompt_id: str, k: int) -> int:
    return int(hashlib.sha256(("cv:" + prompt_id).encode("utf-8")).hexdigest()[:8], 16) % k


def _setup():
    prompts = D.load_prompts()
    lengths = D.load_output_tokens()
    train_ids, _ = D.split_prompt_ids([p.prompt_id for p in prompts])
    by_id = {p.prompt_id: p for p in prompts}
    model_names = sorted({m for per in lengths.values() for m in per})
    return train_ids, by_id, lengths, model_names


def _run_model_names(d: Path, default: list[str]) -> list[str]:
    # Joint runs have more heads than AlpacaEval's models; run() records them.
    return json.loads((d / "config.json").read_text()).get("model_names", default)


@torch.inference_mode()
def all_heads(model, tokenizer, texts, max_length, batch_size=32) -> np.ndarray:
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = None
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                          return_tensors="pt")
        h = model(batch["input_ids"], batch["attention_mask"]).double().numpy()
        if out is None:
            out = np.empty((len(texts), h.shape[1]))
        out[idx] = h
    return out


def run(name: str, cfg: TrainConfig, seeds: list[int], k: int, out: Path, folds: list[int] | None = None,
        save_weights: bool = True) -> None:
    """Fits on the other folds' train prompts of both sources (Arena per cfg.arena_weight); saves every
    head's predictions for the held-out fold of each: ``heads``/``ids`` (AlpacaEval), ``arena_heads``/``arena_ids``."""
    sources = D.load_sources()
    train_ids = {name: src.split()[0] for name, src in sources.items()}
    out = Path(out) / name
    out.mkdir(parents=True, exist_ok=True)
    model_names = training_set(sources, train_ids, cfg)[2]
    (out / "config.json").write_text(json.dumps({**asdict(cfg), "k": k, "model_names": model_names}))
    for fold in (folds if folds is not None else range(k)):
        fit = {n: [i for i in ids if cv_fold(i, k) != fold] for n, ids in train_ids.items()}
        held = {n: [i for i in ids if cv_fold(i, k) == fold] for n, ids in train_ids.items()}
        texts, y, _ = training_set(sources, fit, cfg, model_names)
        for seed in seeds:
            path = out / f"fold{fold}_seed{seed}.npz"
            if path.exists():
                continue
            started = time.time()
            cfg_s = TrainConfig(**{**asdict(cfg), "seed": seed})
            torch.manual_seed(seed)  # head init
            model, tok = load_base(model_names, float(np.nanmean(y[:, CONSENSUS_HEAD])))
            fine_tune(model, tok, texts, y, cfg_s, show_progress=False)
            saved = {}
            for src, prefix in ((D.SOURCE_ALPACA, ""), (D.SOURCE_ARENA, "arena_")):
                by_id = sources[src].by_id()
                saved[prefix + "heads"] = all_heads(model, tok, [by_id[i].prompt for i in held[src]], cfg.max_length)
                saved[prefix + "ids"] = np.array(held[src])
            np.savez(path, **saved)
            if save_weights:
                torch.save({kk: v.half() for kk, v in model.state_dict().items()}, out / f"fold{fold}_seed{seed}.pt")
            print(json.dumps({"name": name, "fold": fold, "seed": seed, "seconds": round(time.time() - started),
                              **source_fold_scores(saved, sources, model_names)}), flush=True)


def source_fold_scores(saved, sources: dict[str, D.Source], model_names: list[str]) -> dict:
    """Out-of-fold scores on each source's own target model (AlpacaEval keys unprefixed, as before)."""
    res = {}
    for src, prefix in ((D.SOURCE_ALPACA, ""), (D.SOURCE_ARENA, "arena_")):
        if prefix + "heads" not in saved:
            continue
        target = sources[src].target_model
        scores = fold_scores(saved[prefix + "heads"], list(saved[prefix + "ids"]), sources[src].lengths, model_names,
                             target=target, head=D.ARENA_MODEL_ALIASES.get(target, target))
        res.update({prefix + key: value for key, value in scores.items()})
    return res


def mix(heads: np.ndarray, own: int, w: float) -> np.ndarray:
    return (1 - w) * heads[:, 1:].mean(1) + w * heads[:, own]


def scored_rows(ids, lengths, target) -> tuple[list[int], list[int]]:
    """Positions in ``ids`` of the prompts the target model answered, and its real lengths for them."""
    rows = [n for n, i in enumerate(ids) if target in lengths[i]]
    return rows, [lengths[ids[n]][target] for n in rows]


def fold_scores(heads, ids, lengths, model_names, target=D.DEFAULT_TARGET_MODEL, head: str | None = None) -> dict:
    own = 1 + model_names.index(head or target)
    rows, actual = scored_rows(ids, lengths, target)
    median = [D.median_log_output_tokens(lengths[ids[n]], exclude_model=target) for n in rows]
    res = {}
    for w in (0.0, 0.2, 0.4, 0.6, 1.0):
        res[f"tau_w{w}"] = round(float(kendalltau(mix(heads, own, w)[rows], actual)[0]), 4)
    res["tau_median_head"] = round(float(kendalltau(heads[rows, CONSENSUS_HEAD], actual)[0]), 4)
    res["tau_vs_others_median"] = round(float(kendalltau(mix(heads, own, 0.0)[rows], median)[0]), 4)
    return res


def model_similarity(fit_ids, lengths, model_names, target=D.DEFAULT_TARGET_MODEL) -> np.ndarray:
    """Pearson correlation of each model's log lengths with the target model's, over the fit prompts."""
    y = target_matrix(fit_ids, lengths, model_names)[:, 1:]
    own = y[:, model_names.index(target)]
    similarity = np.zeros(len(model_names))
    for k in range(len(model_names)):
        both = ~np.isnan(y[:, k]) & ~np.isnan(own)
        if both.sum() > 10:
            similarity[k] = np.corrcoef(y[both, k], own[both])[0, 1]
    return np.nan_to_num(similarity)


def similarity_weighted(heads: np.ndarray, similarity: np.ndarray, power: float) -> np.ndarray:
    """Heads averaged with weights max(similarity, 0) ** power (power 0 = the plain mean of all heads)."""
    weights = np.clip(similarity, 0, None) ** power
    return heads[:, 1:] @ (weights / weights.sum())


def summarize_similarity(out: Path, name: str, powers=(0, 1, 2, 4, 8, 16)) -> dict:
    """Tau of similarity-weighted head means, weights from each fold's fit prompts only."""
    train_ids, _, lengths, model_names = _setup()
    d = Path(out) / name
    k = json.loads((d / "config.json").read_text())["k"]
    target = D.DEFAULT_TARGET_MODEL
    scores: dict[str, list[float]] = {}
    for fold in range(k):
        runs = [np.load(f) for f in sorted(d.glob(f"fold{fold}_seed*.npz"))]
        if not runs:
            continue
        ids = list(runs[0]["ids"])
        heads = np.mean([r["heads"] for r in runs], 0)
        similarity = model_similarity([i for i in train_ids if cv_fold(i, k) != fold], lengths, model_names)
        rows, actual = scored_rows(ids, lengths, target)
        own = heads[rows, 1 + model_names.index(target)]
        for power in powers:
            mixed = similarity_weighted(heads[rows], similarity, power)
            for w in (0.0, 0.2, 0.4):
                scores.setdefault(f"p{power}_w{w}", []).append(float(kendalltau((1 - w) * mixed + w * own, actual)[0]))
    return {key: round(float(np.mean(v)), 4) for key, v in scores.items()}


def distil(out: Path, name: str, teacher_seeds: list[int], student_seed: int, label_weight: float) -> dict:
    """Distils each fold's teacher ensemble (saved fold weights) into one student, scored out of fold.

    The student's targets on the fit prompts are label_weight * real lengths + (1 - label_weight) * the
    teachers' mean prediction, and the teachers' prediction alone where a model has no real length (most
    prompts lack some of the 219 models), so the student sees dense targets. One encoder pass to serve."""
    train_ids, by_id, lengths, model_names = _setup()
    d = Path(out) / name
    cfg_dict = json.loads((d / "config.json").read_text())
    k = cfg_dict.pop("k")
    cfg = TrainConfig(**{**cfg_dict, "seed": student_seed})
    rows = []
    for fold in range(k):
        fit = [i for i in train_ids if cv_fold(i, k) != fold]
        held = [i for i in train_ids if cv_fold(i, k) == fold]
        fit_texts = [by_id[i].prompt for i in fit]
        teacher_heads = []
        for seed in teacher_seeds:
            teacher, tok = load_base(model_names, 0.0)
            teacher.load_state_dict({kk: v.float() for kk, v in torch.load(d / f"fold{fold}_seed{seed}.pt").items()},
                                    strict=False)
            teacher.eval()
            teacher_heads.append(all_heads(teacher, tok, fit_texts, cfg.max_length))
        soft = np.mean(teacher_heads, 0).astype(np.float32)
        labels = target_matrix(fit, lengths, model_names)
        y = np.where(np.isnan(labels), soft, label_weight * labels + (1 - label_weight) * soft).astype(np.float32)
        torch.manual_seed(student_seed)
        student, tok = load_base(model_names, float(np.nanmean(labels[:, CONSENSUS_HEAD])))
        fine_tune(student, tok, fit_texts, y, cfg, show_progress=False)
        heads = all_heads(student, tok, [by_id[i].prompt for i in held], cfg.max_length)
        scores = fold_scores(heads, held, lengths, model_names)
        print(json.dumps({"fold": fold, "label_weight": label_weight, **scores}), flush=True)
        rows.append(scores)
    return {key: round(float(np.mean([r[key] for r in rows])), 4) for key in rows[0]}


def summarize(out: Path, name: str, seeds: list[int] | None = None) -> dict:
    sources = D.load_sources()
    d = Path(out) / name
    model_names = _run_model_names(d, _setup()[3])
    per_fold = {}
    for f in sorted(d.glob("fold*_seed*.npz")):
        fold, seed = (int(x) for x in f.stem.replace("fold", "").split("_seed"))
        if seeds is None or seed in seeds:
            per_fold.setdefault(fold, {})[seed] = dict(np.load(f))
    result = {"name": name, "folds": sorted(per_fold), "runs": sum(len(r) for r in per_fold.values())}
    singles, ens = [], []
    for fold, runs in sorted(per_fold.items()):
        for seed, r in runs.items():
            singles.append(source_fold_scores(r, sources, model_names))
        if len(runs) > 1:
            first = next(iter(runs.values()))
            mean = {key: (np.mean([r[key] for r in runs.values()], 0) if key.endswith("heads") else first[key])
                    for key in first}
            ens.append(source_fold_scores(mean, sources, model_names))
    avg = lambda rows: {key: round(float(np.mean([r[key] for r in rows])), 4) for key in rows[0]}
    result["single"] = avg(singles)
    if len(singles) > 1:  # seed/fold spread of single runs: the noise any comparison must beat
        result["single_sd"] = {key: round(float(np.std([r[key] for r in singles])), 4) for key in singles[0]}
    if ens:
        result["ensemble"] = avg(ens)
    return result


def soup(out: Path, name: str, seeds: list[int] | None = None) -> dict:
    """Weight-averages the seeds of each fold (one encoder pass at inference) and scores the soup."""
    train_ids, by_id, lengths, model_names = _setup()
    d = Path(out) / name
    model_names = _run_model_names(d, model_names)
    cfg = json.loads((d / "config.json").read_text())
    k = cfg["k"]
    rows = []
    for fold in range(k):
        files = sorted(d.glob(f"fold{fold}_seed*.pt"))
        if seeds is not None:
            files = [f for f in files if int(f.stem.split("_seed")[1]) in seeds]
        if len(files) < 2:
            continue
        states = [torch.load(f) for f in files]
        avg = {kk: sum(s[kk].float() for s in states) / len(states) for kk in states[0]}
        model, tok = load_base(model_names, 0.0)
        model.load_state_dict(avg, strict=False)
        model.eval()
        held = [i for i in train_ids if cv_fold(i, k) == fold]
        heads = all_heads(model, tok, [by_id[i].prompt for i in held], cfg["max_length"])
        rows.append(fold_scores(heads, held, lengths, model_names))
    return {key: round(float(np.mean([r[key] for r in rows])), 4) for key in rows[0]} if rows else {}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["run", "summarize", "soup", "similarity", "distil"])
    ap.add_argument("--student-seed", type=int, default=2)
    ap.add_argument("--label-weight", type=float, default=0.5)
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", default="/tmp/predictor-cv")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--folds", type=int, nargs="+", default=None)
    for f in fields(TrainConfig):
        if f.name != "seed":
            ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    args = ap.parse_args(argv)
    if args.command == "run":
        cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name != "seed"})
        run(args.name, cfg, args.seeds or [0], args.k, Path(args.out), args.folds)
    elif args.command == "distil":
        print(json.dumps(distil(Path(args.out), args.name, args.seeds or [0, 1], args.student_seed, args.label_weight)))
    elif args.command == "similarity":
        print(json.dumps(summarize_similarity(Path(args.out), args.name)))
    elif args.command == "summarize":
        print(json.dumps(summarize(Path(args.out), args.name, args.seeds)))
    else:
        print(json.dumps(soup(Path(args.out), args.name, args.seeds)))


if __name__ == "__main__":
    main()
