"""Training on both datasets, scoring per source, new heads for unseen served models, and the
learning-from-traffic demonstration's plumbing (a tiny subset, through a real Redis)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import redis

from predictor import data as D


def test_training_set_repeats_arena_and_maps_same_models_to_shared_heads():
    from predictor.train import TrainConfig, training_set

    sources = D.load_sources()
    ids = {name: src.split()[0][:10] for name, src in sources.items()}
    texts0, y0, names0 = training_set(sources, ids, TrainConfig(arena_weight=0))
    texts2, y2, names2 = training_set(sources, ids, TrainConfig(arena_weight=2))
    assert len(texts0) == 10 and len(texts2) == 30 and y2.shape == (30, 1 + len(names2))
    assert texts2[10:20] == texts2[20:30] and np.array_equal(y2[10:20], y2[20:30], equal_nan=True)
    # gpt-4-0314 (Arena) and gpt4_0314 (AlpacaEval) are one model: one head, no second spelling.
    assert "gpt4_0314" in names2 and "gpt-4-0314" not in names2
    assert "claude-1" in names2 and "claude-1" not in names0  # Arena-only models get heads of their own
    assert D.DEMO_MODEL not in names2  # held out of training for the traffic demonstration
    first_arena = ids[D.SOURCE_ARENA][0]
    lengths = sources[D.SOURCE_ARENA].lengths[first_arena]
    assert y2[10, 1 + names2.index("gpt4_0314")] == pytest.approx(math.log1p(lengths["gpt-4-0314"]))
    # The consensus target is the median over the prompt's own dataset's models, without the held-out one.
    without = {m: n for m, n in lengths.items() if m != D.DEMO_MODEL}
    assert y2[10, 0] == pytest.approx(D.median_log_output_tokens(without))


class _LengthOracle:
    """Stands in for LengthPredictor: the served model's true length, or prompt length when unknown."""

    def __init__(self, trained_hashes=()):
        self.by_text = {}
        for src in D.load_sources().values():
            for p in src.prompts:
                self.by_text[p.prompt] = (src.lengths.get(p.prompt_id, {}), p.prompt_tokens)
        self.meta = {"trained_prompt_hashes": list(trained_hashes)}

    def predict(self, prompts, served_model=None):
        return [float(self.by_text[t][0][served_model]) if served_model else float(self.by_text[t][1])
                for t in prompts]


def test_per_source_metrics_scores_each_validation_split_as_the_target_and_as_an_unknown_model():
    from predictor.evaluation import per_source_metrics

    sources = D.load_sources()
    alpaca_val = sources[D.SOURCE_ALPACA].split()[1]
    skip = D.prompt_text_hash(sources[D.SOURCE_ALPACA].by_id()[alpaca_val[0]].prompt)
    result = per_source_metrics(_LengthOracle([skip]), sources)
    assert set(result) == {D.SOURCE_ALPACA, D.SOURCE_ARENA}
    arena = result[D.SOURCE_ARENA]
    assert arena["target_model"] == "gpt-4-0314" and arena["n"] == len(sources[D.SOURCE_ARENA].split()[1])
    assert arena["kendall_tau"] == pytest.approx(1.0) and arena["mae_tokens"] == 0  # the oracle is exact
    assert arena["unknown_model"]["kendall_tau"] < 0.5  # prompt length ranks answers badly
    assert set(arena["unknown_model"]) == {"kendall_tau", "spearman", "mae_tokens"}
    alpaca = result[D.SOURCE_ALPACA]
    assert alpaca["skipped_trained_prompts"] == 1 and alpaca["n"] == len(alpaca_val) - 1
    with_trained = per_source_metrics(_LengthOracle([skip]), sources, include_trained=True,
                                      targets={D.SOURCE_ALPACA: "gpt4_0314", D.SOURCE_ARENA: "gpt-4-0314"})
    assert with_trained[D.SOURCE_ALPACA]["target_model"] == "gpt4_0314"
    assert with_trained[D.SOURCE_ALPACA]["skipped_trained_prompts"] == 0


def test_a_new_head_starts_as_the_unknown_model_prediction():
    import torch

    from predictor.model import CONSENSUS_HEAD, add_heads
    from predictor.predictor import LengthPredictor

    predictor = LengthPredictor.load(quantize=False)
    prompts = ["Write a haiku about rain.", "Explain TCP congestion control in detail."]
    unknown = predictor.predict(prompts, served_model="my-own-model")
    n = len(predictor.model.model_names)
    assert add_heads(predictor.model, ["my-own-model", predictor.model.model_names[0], "my-own-model"]) == ["my-own-model"]
    assert len(predictor.model.model_names) == n + 1 and predictor.model.head.out_features == n + 2
    assert predictor.model.head_index("my-own-model") == n + 1 != CONSENSUS_HEAD
    with torch.inference_mode():  # its own head equals the mean of the others, so the mix changes nothing
        assert predictor.predict(prompts, served_model="my-own-model") == pytest.approx(unknown, rel=1e-4)
    assert add_heads(predictor.model, []) == []


def test_eval_cli_with_a_file_needs_its_lengths_and_target():
    from click.testing import CliRunner

    from predictor.cli import predictor_group

    bad = CliRunner().invoke(predictor_group, ["eval", "--prompts", str(D.DEFAULT_PROMPTS_PATH)])
    assert bad.exit_code != 0 and "--lengths" in bad.output


def test_retrain_demo_feeds_traffic_through_redis_and_scores_held_out_prompts(machine_redis_url, tmp_path):
    """Plumbing only, on 24 traffic prompts and 2 head epochs (the real demonstration is in docs/predictor.md)."""
    from predictor.demo import run_demo

    client = redis.Redis.from_url(machine_redis_url)
    before_keys = set(client.scan_iter("sluice:predictor:feedback:demo:*"))
    result = run_demo(client, D.DEMO_MODEL, work_dir=tmp_path / "registry", limit=24, epochs=2)
    arena = D.load_sources()[D.SOURCE_ARENA]
    held_out = [i for i in arena.split()[1] if D.DEMO_MODEL in arena.lengths[i]]
    assert result["traffic_prompts"] == 24 and result["retrain"]["used_text"] == 24
    assert result["retrain"]["new_heads"] == [D.DEMO_MODEL] and result["had_head_before"] is False
    assert result["before"]["n"] == result["after"]["n"] == result["held_out_prompts"] == len(held_out)
    assert result["tau_gain"] == pytest.approx(result["after"]["kendall_tau"] - result["before"]["kendall_tau"], abs=1e-4)
    assert set(client.scan_iter("sluice:predictor:feedback:demo:*")) == before_keys  # its list is gone
    assert not (tmp_path / "registry" / "CURRENT").exists()  # nothing was made current or announced
    version_dir = next((tmp_path / "registry" / "versions").iterdir())
    assert D.DEMO_MODEL in json.loads((version_dir / "heads.json").read_text())["model_names"]
