"""Sluice output-length predictor: a fine-tuned MiniLM proxy that scores requests for SSJF queues.

The public surface the API server uses (import the submodules; ``predictor.data`` does not pull in torch):
- ``predictor.predictor.LengthPredictor.load(path=None, threads=None).predict(prompts, served_model=None)``
- ``predictor.service.PredictionService(predictor).predict(prompt, served_model) -> float`` (async micro-batcher)
- ``predictor.feedback.record_completion(redis_client, ...)`` / ``retrain(redis_client, ...)`` for learning
  from traffic
"""
