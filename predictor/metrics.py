"""Ranking metrics for length predictions: the queue only uses order, so Kendall tau leads."""
from __future__ import annotations

import numpy as np
from scipy.stats import kendalltau, spearmanr


def length_prediction_metrics(predicted_output_tokens, actual_output_tokens) -> dict:
    predicted = np.asarray(predicted_output_tokens, dtype=float)
    actual = np.asarray(actual_output_tokens, dtype=float)
    return {
        "kendall_tau": float(kendalltau(predicted, actual)[0]),
        "spearman": float(spearmanr(predicted, actual)[0]),
        "mae_tokens": float(np.mean(np.abs(predicted - actual))),
        "n": int(len(actual)),
    }
