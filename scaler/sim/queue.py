"""A simulated lane: request ids kept in rank order, with O(k) access to the head.

The cluster simulation takes the first k queued requests every quantum and puts back the ones no
instance could take. With a plain array, each put-back or arrival copies the whole queue: harmless
at a few hundred waiting requests, but an under-provisioned policy on the ServeGen day builds queues
of 10^5-10^6 requests, and those copies made one simulated day take over an hour.

So the queue is a sorted buffer read from a moving head (arrivals that rank after everything are
appended in amortised O(1); a bulk batch job arriving with earlier deadlines is merged once), plus a
small sorted ``front`` for requests that re-enter out of order (preempted batch sequences). Logically
the queue is the merge of the two, always in rank order, so results are identical to a sorted array.
"""

from __future__ import annotations

import numpy as np

FRONT_LIMIT = 65_536  # beyond this the front is merged into the buffer (keeps take() O(k + front))


class RankedQueue:
    def __init__(self, rank: np.ndarray, capacity: int = 1024):
        self.rank = rank  # rank of every request id: the queue is kept in increasing rank
        self._buf = np.zeros(max(16, capacity), dtype=np.int64)
        self._head = 0
        self._tail = 0
        self._front = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return self._tail - self._head + self._front.size

    @property
    def size(self) -> int:
        return len(self)

    def items(self) -> np.ndarray:
        """Every queued id in rank order (a copy; O(n), for snapshots)."""
        return self._merge(self._front, self._buf[self._head : self._tail])

    def first(self) -> int:
        main = self._buf[self._head] if self._tail > self._head else None
        if self._front.size and (main is None or self.rank[self._front[0]] < self.rank[main]):
            return int(self._front[0])
        return int(main)

    def add(self, ids: np.ndarray) -> None:
        """Enqueue ``ids`` (any order) at their rank."""
        if ids.size == 0:
            return
        ids = ids[np.argsort(self.rank[ids], kind="stable")].astype(np.int64)
        if self._tail == self._head or self.rank[ids[0]] > self.rank[self._buf[self._tail - 1]]:
            self._append(ids)
        else:
            merged = self._merge(self._buf[self._head : self._tail], ids)
            self._head, self._tail = 0, 0
            self._append(merged)

    def add_front(self, ids: np.ndarray) -> None:
        """Re-enqueue ``ids`` that are expected to rank near the head (preempted or refused requests)."""
        if ids.size == 0:
            return
        self._front = self._merge(self._front, ids[np.argsort(self.rank[ids], kind="stable")].astype(np.int64))
        if self._front.size > FRONT_LIMIT:
            front, self._front = self._front, self._front[:0]
            self.add(front)

    def take(self, k: int) -> np.ndarray:
        """Remove and return the first ``k`` ids in rank order."""
        k = min(k, len(self))
        if k <= 0:
            return self._buf[:0].copy()
        main = self._buf[self._head : min(self._head + k, self._tail)]
        if self._front.size == 0:
            self._head += k
            return main.copy()
        # Front item i lands at merged position i + (main items ranked before it): the first k hold a
        # prefix of the front and a prefix of the buffer, found without merging the whole front.
        front = self._front[:k]
        position = np.arange(front.size) + np.searchsorted(self.rank[main], self.rank[front])
        from_front = int(np.count_nonzero(position < k))
        taken = self._merge(front[:from_front], main[: k - from_front])
        self._head += k - from_front
        self._front = self._front[from_front:]
        return taken

    def _merge(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if a.size == 0:
            return b.copy()
        if b.size == 0:
            return a.copy()
        both = np.concatenate([a, b])
        return both[np.argsort(self.rank[both], kind="stable")]

    def _append(self, ids: np.ndarray) -> None:
        n = self._tail - self._head
        if self._tail + ids.size > self._buf.size:
            if n + ids.size > self._buf.size // 2:
                grown = np.zeros(max(2 * self._buf.size, 2 * (n + ids.size)), dtype=np.int64)
            else:
                grown = self._buf
            grown[:n] = self._buf[self._head : self._tail].copy()  # may overlap when reusing the buffer
            self._buf, self._head, self._tail = grown, 0, n
        self._buf[self._tail : self._tail + ids.size] = ids
        self._tail += ids.size
