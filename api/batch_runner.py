"""The batch runner: carries every open batch through its steps (``broker.batch_steps.next_step``).

Each API process runs one.  Every ``batch_poll_interval_s`` it reads the open batches (record and request
counters: two HGETALLs each), asks ``next_step`` what each needs and, for a step that does work, takes the
batch's lease (``SET NX`` with an expiry, renewed while it works) so that one process at a time works on
a batch.  A process that dies loses its leases by expiry; the next runner to look (another replica, or
this one restarted) resumes: validation and enqueue start over from the file, and the ledger enqueues
each request id (``<batch>-<line>``) once, so no line runs twice and none is lost.

The steps:

* **validate**: the input file through ``api.batch_input.parse_batch_input`` (in a thread); a bad line
  fails the batch with its errors and enqueues nothing; otherwise the batch is ``in_progress`` with its
  request count, and its requests are enqueued (below).
* **enqueue**: predict a sample of the lines (``batch_prediction_sample``), build each line's request
  (batch lane, the batch's deadline, a score from the queue policy; lines keep file order among equals)
  and publish them in chunks through ``Enqueuer.enqueue_many``; stop early when the batch closed.
* **finalize / write_files**: read every request's state (pipelined), write the output file (answers) and
  the error file (failed, cancelled, expired, never run), end the batch.
* **expire / close_lane**: close the batch; take its queued requests out of the batch lane in slices
  (``AsyncLedger.close_batch_slice``).  Workers abort its running requests (workers.batch_watch).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from typing import TYPE_CHECKING

import anyio
import redis

from api.batch_input import (BATCH_CANCELLED, BATCH_EXPIRED, ENDPOINT_KINDS, BatchLine, ServedModel, encode_line,
                             error_line, http_error_line, output_line, parse_batch_input)
from api.admission import true_length
from api.errors import APIError
from broker.batch_steps import BatchStep, ends_as, next_step
from broker.batches import BatchRecord, BatchStatus, BatchStore, TransitionRefused, request_id_of
from broker.ledger import RequestRecord, RequestStatus
from broker.queue_policies import ScoreInput
from core import keys

if TYPE_CHECKING:
    from api.app import SluiceAPI

log = logging.getLogger(__name__)

ENQUEUE_CHUNK = 2_000  # requests built and published at a time (between checks that the batch is still open)
MAX_RETRY_PAUSE_S = 60.0
READ_CHUNK = 1_000  # request states read in one pipeline when the output files are written
# Within one batch all lines get the same predicted length; this spacing of their arrival times keeps
# them in file order in the lane (a score's resolution near 1.7e9 s is ~2e-7 s).
LINE_SPACING_S = 1e-6

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


def split_lines(content: bytes) -> list[bytes]:
    """An input file's lines, numbered from 1 by position (blank ones included, as validation numbers them)."""
    lines = content.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def custom_ids(lines: list[bytes]) -> dict[int, str]:
    """line number -> custom_id of every line that has one (a validated file: every non-blank line)."""
    found = {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except ValueError:
            continue
        if isinstance(item, dict) and isinstance(item.get("custom_id"), str):
            found[number] = item["custom_id"]
    return found


def result_line(record: RequestRecord | None, *, custom_id: str, request_id: str, kind: str, model: str,
                closed: str | None) -> tuple[bool, dict]:
    """(goes to the output file, the line) for one request of a batch that has ended its work."""
    if record is not None and record.status is RequestStatus.done and record.result is not None:
        return True, output_line(custom_id=custom_id, request_id=request_id, kind=kind, model=model,
                                 created=int(record.enqueued_at or 0), result=record.result)
    if record is not None and record.status is RequestStatus.failed:
        error = APIError(500, f"generation failed: {record.error}", type="server_error")
        return False, http_error_line(custom_id=custom_id, request_id=request_id, error=error)
    status = record.status.value if record is not None else closed
    code, message = BATCH_EXPIRED if status == "expired" else BATCH_CANCELLED
    if status not in ("expired", "cancelled"):
        code, message = "request_lost", "This request has no recorded result."  # not expected: a lost state
    return False, error_line(custom_id=custom_id, request_id=request_id, code=code, message=message)


class BatchRunner:
    def __init__(self, sluice: "SluiceAPI"):
        self.sluice = sluice
        self.settings = sluice.settings
        self.store: BatchStore = sluice.batches
        self.owner = f"api-{secrets.token_hex(6)}"
        self._release = sluice.aioredis.register_script(_RELEASE)
        self._renew = sluice.aioredis.register_script(_RENEW)
        self._working: dict[str, asyncio.Task] = {}
        # A step that failed is tried again after a pause that doubles with each failure (up to a minute):
        # batch id -> (failures in a row, monotonic time before which it is left alone).
        self._failures: dict[str, tuple[int, float]] = {}
        self._wake = asyncio.Event()
        # What a batch line is checked against and built for (the API's own limits).
        self.served = ServedModel(self.settings.model_name, self.settings.max_model_len,
                                  self.settings.default_max_tokens)

    def wake(self) -> None:
        """Look now (a batch was created or cancelled here), not at the next interval."""
        self._wake.set()

    # --- the loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            try:
                await self.tick(time.time())
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # An outage (docs/operations.md): /healthz says so; one line per round, not a traceback.
                log.warning("batch runner: Redis unreachable (%s); trying again", exc)
            except redis.RedisError:
                log.exception("batch runner: Redis error; trying again")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.batch_poll_interval_s)
            self._wake.clear()

    async def tick(self, now: float) -> None:
        for batch_id in await self.store.open_ids():
            if batch_id in self._working or self._failures.get(batch_id, (0, 0.0))[1] > time.monotonic():
                continue
            found = await self.store.get(batch_id)
            if found is None:
                continue
            record, counts = found
            step = next_step(record, counts, now)
            if step in (BatchStep.wait, BatchStep.none):
                continue
            if not await self.sluice.aioredis.set(keys.batch_lease_key(batch_id), self.owner, nx=True,
                                                  px=int(self.settings.batch_lease_s * 1000)):
                continue  # another process works on it
            log.info("batch %s: %s (status %s, %d queued, %d running, %d ended of %d)", batch_id, step.value,
                     record.status.value, counts.queued, counts.running, counts.ended, record.total)
            task = asyncio.create_task(self._work(batch_id, step), name=f"batch-{batch_id}-{step.value}")
            self._working[batch_id] = task

    async def close(self) -> None:
        for task in list(self._working.values()):
            task.cancel()
        await asyncio.gather(*self._working.values(), return_exceptions=True)

    async def _work(self, batch_id: str, step: BatchStep) -> None:
        renewer = asyncio.create_task(self._keep_lease(batch_id))
        done = False
        try:
            await getattr(self, step.value)(batch_id)
            done = True
            self._failures.pop(batch_id, None)
        except TransitionRefused as exc:
            log.info("batch %s: %s stopped: %s", batch_id, step.value, exc)  # e.g. cancelled meanwhile
        except asyncio.CancelledError:
            raise
        except Exception:
            failures = self._failures.get(batch_id, (0, 0.0))[0] + 1
            pause = min(MAX_RETRY_PAUSE_S, 2.0 ** failures)
            self._failures[batch_id] = (failures, time.monotonic() + pause)
            log.exception("batch %s: %s failed (%d in a row); trying again in %.0f s", batch_id, step.value,
                          failures, pause)
        finally:
            renewer.cancel()
            self._working.pop(batch_id, None)
            if done:
                self.wake()  # its next step may be due at once (e.g. files to write once the lane is closed)
            with anyio.CancelScope(shield=True):
                try:
                    await self._release(keys=[keys.batch_lease_key(batch_id)], args=[self.owner])
                except redis.RedisError:
                    pass  # it expires

    async def _keep_lease(self, batch_id: str) -> None:
        lease_ms = int(self.settings.batch_lease_s * 1000)
        while True:
            await asyncio.sleep(self.settings.batch_lease_s / 3)
            await self._renew(keys=[keys.batch_lease_key(batch_id)], args=[self.owner, lease_ms])

    # --- the steps ----------------------------------------------------------------------------------
    async def _record(self, batch_id: str) -> BatchRecord:
        found = await self.store.get(batch_id)
        if found is None:
            raise TransitionRefused(batch_id, None)
        return found[0]

    async def _input_lines(self, record: BatchRecord) -> list[bytes] | None:
        opened = await self.sluice.files.open(record.input_file_id)
        if opened is None:
            return None
        _file, chunks = opened
        content = b"".join([chunk async for chunk in chunks])
        return split_lines(content)

    async def _parse(self, record: BatchRecord, lines: list[bytes]):
        served = self.served
        return await anyio.to_thread.run_sync(lambda: parse_batch_input(
            lines, endpoint=record.endpoint, tokenize=self.sluice.tokenize, served=served,
            queue_policy=self.sluice.queue_policy))

    async def validate(self, batch_id: str) -> None:
        record = await self._record(batch_id)
        lines = await self._input_lines(record)
        if lines is None:
            await self.store.fail(batch_id, time.time(), {"object": "list", "data": [{
                "code": "input_file_missing", "message": f"the input file {record.input_file_id} was deleted",
                "param": "input_file_id", "line": None}]})
            return
        started = time.perf_counter()
        parsed = await self._parse(record, lines)
        if not parsed.ok:
            log.info("batch %s failed validation: %d bad lines", batch_id, parsed.error_count)
            await self.store.fail(batch_id, time.time(), parsed.errors_object())
            return
        log.info("batch %s: %d requests valid in %.1f s", batch_id, len(parsed.lines), time.perf_counter() - started)
        await self.store.start(batch_id, time.time(), len(parsed.lines))
        await self._enqueue(await self._record(batch_id), parsed.lines)

    async def enqueue(self, batch_id: str) -> None:
        """Resume an enqueue that a dead process left unfinished: from the start (the ledger skips requests
        already there)."""
        record = await self._record(batch_id)
        lines = await self._input_lines(record)
        parsed = await self._parse(record, lines or [])
        if lines is None or not parsed.ok:  # the file changed or went away after validation
            log.error("batch %s: its input file no longer validates; enqueueing nothing more", batch_id)
            await self.store.mark(batch_id, allowed=[BatchStatus.in_progress], enqueued=True)
            return
        await self._enqueue(record, parsed.lines)

    async def _predicted_length(self, lines: list[BatchLine]) -> float | None:
        """The batch's predicted output length: the mean over an evenly spaced sample of its lines."""
        if not self.sluice.predicts_lengths or not lines:
            return None
        sample = max(1, min(len(lines), self.settings.batch_prediction_sample))
        picked = [lines[i * len(lines) // sample] for i in range(sample)]
        model = self.settings.model_name
        predictions = await asyncio.gather(*(self.sluice.predictor.predict(line.prompt_text, model) for line in picked))
        # A tenth of a token is finer than any prediction is good for, and every queued message carries it.
        return round(sum(predictions) / len(predictions), 1)

    async def _enqueue(self, record: BatchRecord, lines: list[BatchLine]) -> None:
        started = time.perf_counter()
        predicted = await self._predicted_length(lines)
        arrival = record.in_progress_at or time.time()
        served = self.served
        policy = self.sluice.queue_policy
        entered = 0

        def build(chunk: list[BatchLine]) -> list:
            now = time.time()
            requests = []
            for line in chunk:
                request = line.to_request(served, deadline=record.expires_at, now=now,
                                          request_id=request_id_of(record.id, line.line))
                request.batch_id = record.id
                request.tenant = record.tenant  # the batch's owner owns its requests and shares by its weight
                request.tenant_weight = record.tenant_weight
                request.predicted_output_tokens = predicted
                request.score = policy.score(ScoreInput(
                    arrival_time=arrival + line.line * LINE_SPACING_S, predicted_output_tokens=predicted,
                    true_output_tokens=true_length(line.body, policy),
                    max_output_tokens=request.sampling.max_tokens))
                requests.append(request)
            return requests

        for start in range(0, len(lines), ENQUEUE_CHUNK):
            found = await self.store.get(record.id)
            if found is None or found[1].closed is not None:
                log.info("batch %s closed during its enqueue; %d requests entered", record.id, entered)
                break
            requests = await anyio.to_thread.run_sync(build, lines[start:start + ENQUEUE_CHUNK])
            entered += await anyio.to_thread.run_sync(self.sluice.enqueuer.enqueue_many, requests)
        await self.store.mark(record.id, allowed=[BatchStatus.in_progress, BatchStatus.cancelling,
                                                  BatchStatus.finalizing], enqueued=True)
        log.info("batch %s: %d requests enqueued in %.1f s (predicted length %s)", record.id, entered,
                 time.perf_counter() - started, f"{predicted:.0f}" if predicted is not None else "none")

    async def finalize(self, batch_id: str) -> None:
        await self.store.finalize(batch_id, time.time())
        await self.write_files(batch_id)

    async def expire(self, batch_id: str) -> None:
        await self.store.expire(batch_id, time.time())
        await self.close_lane(batch_id)

    async def close_lane(self, batch_id: str) -> None:
        """Take the closed batch's queued requests out of the batch lane, slice by slice.  Workers popping
        from the lane meanwhile shift ranks, so a pass may step over a few: passes repeat until one ends
        none (any left are ended by the ledger when a worker starts them)."""
        found = await self.store.get(batch_id)
        if found is None or found[1].closed is None:
            return
        status = RequestStatus(found[1].closed)
        total = 0
        for _attempt in range(3):
            ended, first = 0, 0
            while True:
                sliced = await self.sluice.ledger.close_batch_slice(batch_id, "batch", status, time.time(), first)
                ended += sliced.ended
                if sliced.at_end:
                    break
                first = sliced.next_rank
            total += ended
            if ended == 0:
                break
        log.info("batch %s %s: %d queued requests taken out of the lane", batch_id, status.value, total)
        await self.store.mark(batch_id, allowed=[BatchStatus.cancelling, BatchStatus.finalizing], lane_closed=True)

    async def write_files(self, batch_id: str) -> None:
        found = await self.store.get(batch_id)
        if found is None:
            raise TransitionRefused(batch_id, None)
        record, closed = found[0], found[1].closed
        lines = await self._input_lines(record) or []
        ids = custom_ids(lines) if record.total else {}
        kind = ENDPOINT_KINDS.get(record.endpoint, "chat")
        output: list[bytes] = []
        errors: list[bytes] = []
        numbers = sorted(ids)
        for start in range(0, len(numbers), READ_CHUNK):
            chunk = numbers[start:start + READ_CHUNK]
            request_ids = [request_id_of(batch_id, n) for n in chunk]
            records = await self.sluice.ledger.read_many(request_ids)
            for number, request_id, state in zip(chunk, request_ids, records):
                good, line = result_line(state, custom_id=ids[number], request_id=request_id, kind=kind,
                                         model=self.settings.model_name, closed=closed)
                (output if good else errors).append(encode_line(line))
        now = time.time()
        output_id = await self._write(f"{batch_id}_output.jsonl", output, now, record.tenant)
        error_id = await self._write(f"{batch_id}_error.jsonl", errors, now, record.tenant)
        to = ends_as(record)
        await self.store.end(batch_id, to, time.time(), output_id, error_id)
        log.info("batch %s %s: %d answers, %d errors", batch_id, to.value, len(output), len(errors))

    async def _write(self, filename: str, lines: list[bytes], now: float, owner: str | None) -> str | None:
        if not lines:
            return None

        async def chunks():
            for start in range(0, len(lines), READ_CHUNK):
                yield b"".join(lines[start:start + READ_CHUNK])

        written = await self.sluice.files.create(chunks(), filename=filename, purpose="batch_output", now=now,
                                                owner=owner)
        return written.id
