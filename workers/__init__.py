"""Celery workers, each owning one vLLM AsyncLLM engine."""
