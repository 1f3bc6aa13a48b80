"""What a batch needs next: a pure function of its record, its request counters and ``now``.

The batch runner (:mod:`api.batch_runner`) asks ``next_step`` for every open batch and does the step;
the steps themselves are atomic transitions of :mod:`broker.batches`.

* ``validate``   — a new batch: read and check its input file, then count and enqueue its requests.
* ``enqueue``    — validated, not every request in the lane yet (the process enqueueing it died):
  enqueue again from the start; the ledger takes each request id once.
* ``finalize``   — every request ended: write the output files, end ``completed``.
* ``expire``     — the deadline passed first: close the batch (``expired``).
* ``close_lane`` — closed (cancelled or expired): take its queued requests out of the lane at once.
* ``write_files``— closed, its lane part emptied, no request running any more: write what finished and
  end ``cancelled`` / ``expired``.
* ``wait``       — requests are queued or running, or running requests of a closed batch are being aborted.
"""

from __future__ import annotations

import enum

from broker.batches import BatchCounts, BatchRecord, BatchStatus


class BatchStep(str, enum.Enum):
    validate = "validate"
    enqueue = "enqueue"
    finalize = "finalize"
    expire = "expire"
    close_lane = "close_lane"
    write_files = "write_files"
    wait = "wait"
    none = "none"  # ended


def next_step(record: BatchRecord, counts: BatchCounts, now: float) -> BatchStep:
    status = record.status
    if status.ended:
        return BatchStep.none
    if status is BatchStatus.validating:
        return BatchStep.validate
    if status is BatchStatus.in_progress:
        if record.enqueued and counts.unfinished == 0:
            return BatchStep.finalize  # done before (or at) the deadline: it completed
        if now >= record.expires_at:
            return BatchStep.expire
        return BatchStep.wait if record.enqueued else BatchStep.enqueue
    # Cancelling, or finalizing: closed (cancelled / expired), or completed and writing its files.
    if counts.closed is not None and not record.lane_closed:
        return BatchStep.close_lane
    if counts.unfinished > 0:
        return BatchStep.wait
    return BatchStep.write_files


def ends_as(record: BatchRecord) -> BatchStatus:
    """The status ``write_files`` ends a batch in."""
    if record.status is BatchStatus.cancelling:
        return BatchStatus.cancelled
    return BatchStatus.expired if record.ends_as == "expired" else BatchStatus.completed
