"""The output-length predictor inside the API: micro-batched predictions, hot reload, traffic feedback."""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger(__name__)


async def attach_predictor(sluice) -> None:
    """Load the registry's current proxy model and serve predictions from it (SSJF needs them, and
    ``predict_lengths=true`` asks for them under any policy)."""
    from predictor.predictor import LengthPredictor
    from predictor.registry import ModelRegistry
    from predictor.service import PredictionService

    settings = sluice.settings
    started = time.perf_counter()
    registry = ModelRegistry(settings.predictor_registry_dir)
    artifact = registry.current_artifact_dir()
    # predictor_threads (default 1): the API shares its host with vLLM engines whose OpenMP threads spin.
    predictor = await asyncio.to_thread(LengthPredictor.load, artifact, threads=settings.predictor_threads)
    sluice.predictor = PredictionService(
        predictor, registry=registry, redis_client=sluice.aioredis,
        reload_interval_s=settings.predictor_reload_interval_s,
    )
    log.info("length predictor %s loaded from %s in %.2fs, %d torch thread(s); hot reload every %.0fs",
             predictor.version, artifact, time.perf_counter() - started, settings.predictor_threads,
             settings.predictor_reload_interval_s)


async def record_feedback(sluice, request, record: dict) -> None:
    """Append a finished request to the predictor's bounded traffic log (never fails the request)."""
    if not sluice.settings.predictor_feedback or request.prompt_text is None:
        return
    from predictor.feedback import record_completion

    predictor = sluice.predictor.predictor if sluice.predictor is not None else None
    try:
        await asyncio.to_thread(
            record_completion, sluice.redis, prompt_text=request.prompt_text, served_model=request.model,
            prompt_tokens=record["prompt_tokens"], output_tokens=record["output_tokens"],
            keep_prompt_text=sluice.settings.keep_prompt_text, predictor=predictor,
            max_entries=sluice.settings.predictor_feedback_max_entries,
        )
    except Exception:
        log.exception("could not record predictor feedback for %s", request.request_id)
