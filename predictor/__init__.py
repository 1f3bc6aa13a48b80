"""Sluice output-length predictor: a fine-tuned MiniLM proxy that scores requests for SSJF queues.

The public surface the API server uses:
- ``LengthPredictor.load(path=None).predict(prompts, served_model=None) -> list[float]``
- ``PredictionService(predictor).predict(prompt, served_model) -> float`` (async micro-batcher)
- ``record_completion(redis_client, ...)`` / ``retrain(redis_client, ...)`` for learning from traffic
"""

# Imports are lazy so that `import predictor.data` does not pull in torch.
__all__ = ["LengthPredictor", "PredictionService", "record_completion", "retrain", "split_prompt_ids"]


def __getattr__(name):
    if name == "LengthPredictor":
        from predictor.predictor import LengthPredictor
        return LengthPredictor
    if name == "PredictionService":
        from predictor.service import PredictionService
        return PredictionService
    if name in ("record_completion", "retrain"):
        from predictor import feedback
        return getattr(feedback, name)
    if name == "split_prompt_ids":
        from predictor.data import split_prompt_ids
        return split_prompt_ids
    raise AttributeError(name)
