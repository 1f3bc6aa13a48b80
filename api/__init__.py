"""The OpenAI-compatible HTTP API: validate, score, enqueue, stream back."""
