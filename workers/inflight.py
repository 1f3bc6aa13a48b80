"""The requests a worker holds, in one place with one lock.

A request is *held* from the moment a Celery pool thread starts serving it until that thread returns
(its message is unacknowledged all that time).  The same record tells:

* the in-flight counts (the admission check, the preemption decision and the heartbeat read them);
* whether a delivery is a spurious redelivery of a request already running here (same request id);
* the request's attempt on the engine loop: its task, whether it passed the batching gate, whether it is
  still generating (only then can it be preempted), and why it was told to yield, if it was.  A request
  told to yield still holds its Celery slot until its message is requeued, but no longer counts as
  occupying the worker;
* interactive requests taken through the headroom slot of a full worker, each owed one batch request's
  place, until the preemption watch settles them.

Pool threads, the engine loop and the heartbeat thread all go through :class:`InflightRequests`, and
every read and write of its state takes its one lock (it is never held across I/O or an ``await``).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from core.names import SLO_CLASSES
from workers.preemption import RunningRequest


@dataclass(eq=False)
class HeldRequest:
    """One held request. Mutated only by :class:`InflightRequests`, under its lock."""

    request_id: str
    lane: str
    preemptible: bool  # False for a streamed request: tokens a client has seen cannot be taken back
    finished: threading.Event = field(default_factory=threading.Event)  # set when its serve() returns
    counted: bool = False  # started (the ledger has its attempt): counts as in flight
    attempt: int = 0
    started_at: float = 0.0
    task: asyncio.Task | None = None  # the attempt's task on the engine loop
    admitted: bool = False  # past the batching gate, i.e. on the engine
    generating: bool = False  # on the loop and not yet done generating: the only time it can be preempted
    preempted: str | None = None  # why it was told to yield; it then no longer occupies the worker
    batch_id: str | None = None  # the Batch API batch it belongs to
    aborted: str | None = None  # its batch closed, or its client left: "cancelled" or "expired"; ends unanswered

    @property
    def occupies(self) -> bool:
        return self.counted and self.preempted is None


class InflightRequests:
    def __init__(self):
        self._lock = threading.Lock()
        self._held: dict[str, HeldRequest] = {}
        self._displacements_owed = 0
        self._preempted_batch_requests = 0

    # --- pool threads ------------------------------------------------------------------------
    def hold(self, request_id: str, lane: str, preemptible: bool,
             batch_id: str | None = None) -> tuple[HeldRequest | None, HeldRequest | None]:
        """(new record, None), or (None, the record already held) when this request id runs here already."""
        with self._lock:
            existing = self._held.get(request_id)
            if existing is not None:
                return None, existing
            held = self._held[request_id] = HeldRequest(request_id, lane, preemptible, batch_id=batch_id)
            return held, None

    def count(self, held: HeldRequest, attempt: int, started_at: float, *, admission_limit: int,
              preempts: bool) -> bool:
        """The request started (its attempt is in the ledger): count it in flight.  True if it is an
        interactive request taken over the admission limit (through the headroom slot) by a worker that
        ``preempts``: one batch request then owes it a place."""
        with self._lock:
            occupied = sum(1 for other in self._held.values() if other.occupies)
            over_limit = preempts and held.lane == "interactive" and occupied >= admission_limit
            if over_limit:
                self._displacements_owed += 1
            held.attempt, held.started_at, held.counted = attempt, started_at, True
            return over_limit

    def release(self, held: HeldRequest) -> None:
        """Its serve() returns: the slot is free (and a spurious redelivery waiting on it may go on)."""
        with self._lock:
            if self._held.get(held.request_id) is held:
                del self._held[held.request_id]
        held.finished.set()

    # --- the engine loop ---------------------------------------------------------------------
    def on_loop(self, held: HeldRequest, task: asyncio.Task) -> None:
        with self._lock:
            held.task, held.generating = task, True

    def admitted(self, held: HeldRequest) -> None:
        with self._lock:
            held.admitted = True

    def generation_ended(self, held: HeldRequest) -> None:
        """Generated (or failed): from here on this attempt cannot be preempted."""
        with self._lock:
            held.generating = False

    def preempted_reason(self, held: HeldRequest) -> str | None:
        with self._lock:
            return held.preempted

    def aborted_as(self, held: HeldRequest) -> str | None:
        with self._lock:
            return held.aborted

    def batch_ids(self) -> set[str]:
        """The batches of the started requests held here (the batch watch reads whether they closed)."""
        with self._lock:
            return {h.batch_id for h in self._held.values() if h.batch_id and h.counted and h.aborted is None}

    def abort_batch(self, batch_id: str, status: str) -> list[HeldRequest]:
        """Mark the started requests of a closed batch aborted; the caller cancels the tasks returned."""
        with self._lock:
            aborted = []
            for held in self._held.values():
                if held.batch_id == batch_id and held.counted and held.aborted is None:
                    held.aborted = status
                    if held.task is not None and not held.task.done():
                        aborted.append(held)
            return aborted

    def followed_ids(self) -> list[str]:
        """The started requests held here that a client follows (not a batch's), not aborted yet: the abort
        watch reads whether their client abandoned them."""
        with self._lock:
            return [h.request_id for h in self._held.values() if h.batch_id is None and h.counted and h.aborted is None]

    def abort_request(self, request_id: str, status: str) -> HeldRequest | None:
        """Mark a started request aborted (its client left); the caller cancels the task returned, if any."""
        with self._lock:
            held = self._held.get(request_id)
            if held is None or not held.counted or held.aborted is not None:
                return None
            held.aborted = status
            return held if held.task is not None and not held.task.done() else None

    def preemption_view(self) -> tuple[list[RunningRequest], dict[str, int], int, list[asyncio.Task]]:
        """What the preemption decision needs, in one look: the batch requests it may preempt (on the engine,
        generating, not told yet), the in-flight counts by lane without the requests already yielding, the
        displacements owed (taken: this decision settles them, or they are forgiven when no batch request
        can give a place), and the tasks of yielding requests still running (to cancel again: a
        cancellation can be swallowed)."""
        with self._lock:
            candidates = [RunningRequest(h.request_id, h.lane, h.started_at, h.attempt, preemptible=h.preemptible)
                          for h in self._held.values()
                          if h.lane == "batch" and h.admitted and h.generating and h.preempted is None]
            inflight = {lane: sum(1 for h in self._held.values() if h.occupies and h.lane == lane)
                        for lane in SLO_CLASSES}
            owed, self._displacements_owed = self._displacements_owed, 0
            stuck = [h.task for h in self._held.values()
                     if h.preempted is not None and h.generating and h.task is not None and not h.task.done()]
        return candidates, inflight, owed, stuck

    def preempt(self, request_id: str, reason: str) -> HeldRequest | None:
        """Tell a request to yield; None if it finished or was told already meanwhile.  The caller cancels
        its task."""
        with self._lock:
            held = self._held.get(request_id)
            if held is None or held.preempted is not None or not held.generating or held.task is None \
                    or held.task.done():
                return None
            held.preempted = reason
            self._preempted_batch_requests += 1
            return held

    # --- any thread (the heartbeat) ----------------------------------------------------------
    def counts(self) -> tuple[dict[str, int], int]:
        """(requests held and started, by lane; batch requests preempted so far)."""
        with self._lock:
            by_lane = {lane: sum(1 for h in self._held.values() if h.counted and h.lane == lane)
                       for lane in SLO_CLASSES}
            return by_lane, self._preempted_batch_requests
