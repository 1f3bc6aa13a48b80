"""Batches, pure: the record's encoding and OpenAI object, what a batch needs next, its output lines."""

from __future__ import annotations

import json

import pytest

from api.batch_runner import custom_ids, result_line, split_lines
from broker.batch_steps import BatchStep, ends_as, next_step
from broker.batches import BatchCounts, BatchRecord, BatchStatus, request_id_of
from broker.ledger import RequestRecord, RequestStatus

NOW = 1_800_000_000.0


def record(**fields) -> BatchRecord:
    base = dict(id="batch_1", endpoint="/v1/chat/completions", input_file_id="file-1", completion_window="2h",
                created_at=NOW, expires_at=NOW + 7200)
    return BatchRecord(**{**base, **fields})


def test_a_record_survives_its_redis_encoding():
    full = record(status=BatchStatus.cancelling, metadata={"job": "nightly"}, total=5, enqueued=True,
                  errors={"object": "list", "data": []}, in_progress_at=NOW + 1, cancelling_at=NOW + 9,
                  output_file_id="file-out", ends_as="expired")
    raw = {k.encode(): v.encode() for k, v in full.to_redis().items()}
    assert BatchRecord.from_redis(raw) == full
    assert BatchRecord.from_redis(record().to_redis()) == record()


def test_the_openai_object_counts_requests_from_the_ledger_counters():
    counts = BatchCounts(queued=2, running=1, done=5, failed=1, cancelled=3, expired=0)
    batch = record(status=BatchStatus.in_progress, total=12, in_progress_at=NOW + 1.7).to_openai(counts)
    assert batch["request_counts"] == {"total": 12, "completed": 5, "failed": 4}
    assert (batch["object"], batch["status"], batch["in_progress_at"], batch["completed_at"]) == (
        "batch", "in_progress", int(NOW + 1), None)
    assert batch["expires_at"] - batch["created_at"] == 7200
    assert batch["sluice"]["queued"] == 2 and batch["sluice"]["running"] == 1


def test_counts_read_from_redis():
    counts = BatchCounts.from_redis({b"queued": b"3", b"done": b"2", b"closed": b"cancelled", b"running": b"-0"})
    assert counts == BatchCounts(queued=3, done=2, closed="cancelled")
    assert (counts.unfinished, counts.ended) == (3, 2)


@pytest.mark.parametrize("fields, counts, now, step", [
    ({}, BatchCounts(), NOW, BatchStep.validate),
    (dict(status=BatchStatus.in_progress), BatchCounts(queued=3), NOW, BatchStep.enqueue),
    (dict(status=BatchStatus.in_progress, enqueued=True), BatchCounts(queued=3), NOW, BatchStep.wait),
    (dict(status=BatchStatus.in_progress, enqueued=True), BatchCounts(done=3), NOW, BatchStep.finalize),
    # Done at the deadline: it completed, it did not expire.
    (dict(status=BatchStatus.in_progress, enqueued=True), BatchCounts(done=3), NOW + 9000, BatchStep.finalize),
    (dict(status=BatchStatus.in_progress, enqueued=True), BatchCounts(running=1), NOW + 7200, BatchStep.expire),
    # An enqueue that never finished does not hold a batch past its deadline.
    (dict(status=BatchStatus.in_progress), BatchCounts(), NOW + 7200, BatchStep.expire),
    (dict(status=BatchStatus.cancelling), BatchCounts(queued=9, closed="cancelled"), NOW, BatchStep.close_lane),
    (dict(status=BatchStatus.cancelling, lane_closed=True), BatchCounts(running=2, closed="cancelled"), NOW,
     BatchStep.wait),
    (dict(status=BatchStatus.cancelling, lane_closed=True), BatchCounts(done=2, cancelled=7, closed="cancelled"), NOW,
     BatchStep.write_files),
    (dict(status=BatchStatus.finalizing, ends_as="expired"), BatchCounts(queued=1, closed="expired"), NOW + 7200,
     BatchStep.close_lane),
    (dict(status=BatchStatus.finalizing, ends_as="completed"), BatchCounts(done=3), NOW, BatchStep.write_files),
    (dict(status=BatchStatus.completed), BatchCounts(done=3), NOW, BatchStep.none),
    (dict(status=BatchStatus.failed), BatchCounts(), NOW, BatchStep.none),
])
def test_next_step(fields, counts, now, step):
    assert next_step(record(**fields), counts, now) is step


def test_what_writing_the_files_ends_a_batch_as():
    assert ends_as(record(status=BatchStatus.cancelling)) is BatchStatus.cancelled
    assert ends_as(record(status=BatchStatus.finalizing, ends_as="expired")) is BatchStatus.expired
    assert ends_as(record(status=BatchStatus.finalizing, ends_as="completed")) is BatchStatus.completed


def test_line_numbers_of_the_input_file_match_validation():
    content = b'{"custom_id": "a"}\n\n{"custom_id": "b"}\nnot json\n{"custom_id": 3}\n'
    lines = split_lines(content)
    assert len(lines) == 5
    assert custom_ids(lines) == {1: "a", 3: "b"}
    assert split_lines(b'{"custom_id": "a"}') == [b'{"custom_id": "a"}']
    assert request_id_of("batch_1", 3) == "batch_1-3"


def result(status: RequestStatus, **fields) -> RequestRecord:
    return RequestRecord(request_id="batch_1-1", status=status, enqueued_at=NOW, **fields)


def test_result_lines_for_every_way_a_request_ends():
    common = dict(custom_id="a", request_id="batch_1-1", kind="chat", model="m")
    answer = {"text": "hi", "finish_reason": "length", "prompt_tokens": 3, "output_tokens": 1, "slo": "batch"}
    good, line = result_line(result(RequestStatus.done, result=answer), closed=None, **common)
    assert good and line["response"]["status_code"] == 200 and line["error"] is None
    assert line["response"]["body"]["choices"][0]["message"]["content"] == "hi"

    good, line = result_line(result(RequestStatus.failed, error="engine died"), closed=None, **common)
    assert not good and line["response"]["status_code"] == 500
    assert "engine died" in line["response"]["body"]["error"]["message"]

    for status, closed, code in ((RequestStatus.cancelled, "cancelled", "batch_cancelled"),
                                 (RequestStatus.expired, "expired", "batch_expired")):
        good, line = result_line(result(status), closed=closed, **common)
        assert not good and line["response"] is None and line["error"]["code"] == code
        # Never enqueued (the batch closed during its enqueue): the batch's closing status answers for it.
        good, line = result_line(None, closed=closed, **common)
        assert not good and line["error"]["code"] == code
    good, line = result_line(None, closed=None, **common)
    assert not good and line["error"]["code"] == "request_lost"
    assert json.dumps(line)
