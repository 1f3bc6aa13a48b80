"""A short schemathesis fuzz of the whole OpenAPI schema against the real stack (the long one: `sluice bench fuzz`)."""

from __future__ import annotations

import pytest

from bench.fuzz import run_fuzz

pytestmark = pytest.mark.integration


def test_schema_fuzz_finds_no_server_error(stack):
    report = run_fuzz(stack.base_url, stack.redis_url, examples=8, seed=12)
    summary = report.to_dict()
    assert report.requests > 100, summary
    assert report.accepted_completions > 0, summary  # the positive cases do reach the queue
    assert any(400 <= status < 500 for status in report.by_status), summary
    assert not report.failure_counts, summary["failures"]
