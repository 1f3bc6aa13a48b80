"""The batch SDK against the real stack: async submission to the batch lane, polling, refusals."""

from __future__ import annotations

import pytest

from sluice.sdk import SluiceClient, SluiceError
from tests.integration.conftest import lane_snapshot, wait_for_idle

pytestmark = pytest.mark.integration


def test_submit_batch_and_wait_for_answers(stack):
    client = SluiceClient(stack.base_url)
    job = client.submit_batch([f"batch prompt {i}" for i in range(6)], max_tokens=8, deadline_s=600,
                              ignore_eos=True, progress=False)
    results = job.wait(poll_s=0.5, timeout_s=300, progress=False)
    assert len(results) == 6
    assert all(r["output_tokens"] == 8 and r["text"] and r["slo"] == "batch" for r in results)
    assert client.request(job.request_ids[0])["status"] == "done"


def test_refused_batch_raises_and_enqueues_nothing(stack):
    wait_for_idle(stack)
    before = lane_snapshot(stack.redis)
    client = SluiceClient(stack.base_url)
    with pytest.raises(SluiceError) as error:
        client.submit_batch(["a", "b"], max_tokens=8, deadline_s=1_600_000_000, progress=False)
    assert error.value.status == 400 and "deadline" in str(error.value)
    assert lane_snapshot(stack.redis) == before
    with pytest.raises(SluiceError) as missing:
        client.request("cmpl-does-not-exist")
    assert missing.value.status == 404
