"""The Python SDK for batch submitters: run a batch with a deadline, then collect the answers.

    from sluice.sdk import SluiceClient
    client = SluiceClient("http://127.0.0.1:8000")
    job = client.batches.submit(["Summarize ...", "Translate ..."], deadline="2h", max_tokens=256)
    job.wait()                         # a progress bar from the batch's counters
    for line in job.results(order="custom_id"):
        print(line["custom_id"], line["response"]["body"]["choices"][0]["message"]["content"])

``client.batches`` speaks the server's OpenAI Batch API (docs/batch.md): ``submit`` writes the prompts as a
JSONL input file (or takes one you wrote), uploads it with ``POST /v1/files`` and creates the batch; the
deadline becomes its ``completion_window``.  ``wait`` polls the one batch object, whose counters the
server keeps as requests finish, so a poll costs the same for 10 requests as for 50,000.

``client.submit`` sends a single request to the batch lane with ``Prefer: respond-async`` (the API answers
202 at once and keeps the answer for a day; ``client.request(id)`` reads it).  ``submit_batch`` is the
older per-request path built on it.  A refused request (4xx) raises :class:`SluiceError` with the API's
message.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Iterator, Mapping, Sequence

import httpx
from tqdm import tqdm

CHAT_ENDPOINT = "/v1/chat/completions"
COMPLETIONS_ENDPOINT = "/v1/completions"
# A batch in one of these has its final counts and files.
ENDED_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
MAX_WINDOW_S = 24 * 3600  # the longest completion_window the server accepts
RESULT_ORDERS = ("file", "custom_id")


class SluiceError(Exception):
    """The API refused something (``status`` is the HTTP status, ``error`` its error object), or a batch
    ended ``failed`` (``status`` None; see :class:`BatchFailed`)."""

    def __init__(self, status: int | None, error: dict):
        message = error.get("message", error)
        super().__init__(f"{status}: {message}" if status is not None else str(message))
        self.status = status
        self.error = error


class BatchFailed(SluiceError):
    """A batch ended ``failed``: its input was refused line by line (``batch["errors"]``)."""

    def __init__(self, batch: dict):
        errors = (batch.get("errors") or {}).get("data") or []
        described = "; ".join(describe_batch_error(error) for error in errors) or "no errors reported"
        super().__init__(None, {"message": f"batch {batch['id']} failed: {described}", "errors": errors})
        self.batch = batch


def describe_batch_error(error: dict) -> str:
    """One ``errors.data`` entry as ``line 3: duplicate_custom_id: ...``."""
    where = f"line {error['line']}: " if error.get("line") is not None else ""
    return f"{where}{error.get('code')}: {error.get('message')}"


# --- the pure pieces: deadline -> completion_window, prompts -> JSONL -------------------------------------
def completion_window(deadline: float | int | str | datetime.timedelta) -> str:
    """The batch's ``completion_window`` for a deadline given as seconds from now (a number or a timedelta),
    written in hours, minutes and seconds (``5400`` -> ``"1h30m"``), rounded up to a whole second; a string
    (``"2h"``, ``"1h30m"``, ``"24h"``) is passed as it is, for the server to check."""
    if isinstance(deadline, str):
        return deadline.strip()
    if isinstance(deadline, datetime.timedelta):
        deadline = deadline.total_seconds()
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or math.isnan(deadline):
        raise ValueError(f"deadline {deadline!r}: give seconds from now, a timedelta or a duration such as '2h'")
    seconds = math.ceil(deadline)
    if not 0 < seconds <= MAX_WINDOW_S:
        raise ValueError(f"deadline {deadline!r} s: a batch's window is longer than 0 and at most 24h "
                         f"({MAX_WINDOW_S} s)")
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return "".join(f"{value}{unit}" for value, unit in ((hours, "h"), (minutes, "m"), (seconds, "s")) if value)


def batch_input_lines(prompts: Sequence[str] | Mapping[str, str], *, model: str, chat: bool = True,
                      max_tokens: int | None = None, **options) -> Iterator[dict]:
    """The Batch input lines for ``prompts``: custom ids ``"0"`` .. ``"N-1"`` for a sequence, the keys for
    a mapping of custom id to prompt; ``options`` (``temperature``, ``ignore_eos``, ...) go into every body."""
    if isinstance(prompts, str):
        raise TypeError("prompts: a list of prompt strings (or a mapping of custom_id to prompt), not one string")
    pairs = prompts.items() if isinstance(prompts, Mapping) else ((str(n), p) for n, p in enumerate(prompts))
    endpoint = CHAT_ENDPOINT if chat else COMPLETIONS_ENDPOINT
    for custom_id, prompt in pairs:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt {custom_id!r} is {type(prompt).__name__}, not a string")
        body = {"model": model, **({"max_tokens": max_tokens} if max_tokens is not None else {}), **options}
        if chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        yield {"custom_id": str(custom_id), "method": "POST", "url": endpoint, "body": body}


def write_jsonl(lines: Iterable[dict], out: IO[bytes]) -> int:
    """Write one JSON object a line; the number of lines."""
    count = 0
    for line in lines:
        out.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
        count += 1
    return count


def first_line_url(path: Path) -> str | None:
    """The ``url`` of the first non-blank line of a Batch input file (None when there is none to read)."""
    with path.open("rb") as lines:
        for raw in lines:
            if raw.strip():
                try:
                    line = json.loads(raw)
                except ValueError:
                    return None
                return line.get("url") if isinstance(line, dict) else None
    return None


def custom_id_key(line: dict) -> tuple:
    """Sort key for ``order="custom_id"``: decimal ids ("0", "2", "10") by number, then the rest as text."""
    custom_id = str(line.get("custom_id"))
    return (0, int(custom_id), "") if custom_id.isdecimal() else (1, 0, custom_id)


# --- the Batch API --------------------------------------------------------------------------------------
@dataclass
class BatchJob:
    """A batch on the server, by id; every method reads or changes it there."""

    client: "SluiceClient"
    id: str

    def status(self) -> dict:
        """The batch object (OpenAI's fields plus a ``sluice`` block of per-status request counts)."""
        return self.client._check(self.client.http.get(f"/v1/batches/{self.id}"))

    def wait(self, poll_s: float = 2.0, timeout_s: float | None = None, progress: bool = True) -> dict:
        """Poll the batch until it ends; the final batch object.  The bar counts requests ended (completed
        or failed) out of ``request_counts.total``.  A ``failed`` batch (its input refused) raises
        :class:`BatchFailed` naming the lines; ``expired`` and ``cancelled`` return, with partial results."""
        started = time.monotonic()
        bar = tqdm(total=None, desc=self.id, unit="req", disable=not progress)
        shown = 0
        try:
            while True:
                batch = self.status()
                counts = batch.get("request_counts") or {}
                if counts.get("total") and bar.total != counts["total"]:
                    bar.total = counts["total"]  # known once the input is validated
                ended = counts.get("completed", 0) + counts.get("failed", 0)
                bar.set_postfix_str(batch["status"], refresh=False)
                bar.update(ended - shown)
                bar.refresh()
                shown = ended
                if batch["status"] in ENDED_STATUSES:
                    break
                if timeout_s is not None and time.monotonic() - started > timeout_s:
                    raise TimeoutError(f"batch {self.id} is still {batch['status']} after {timeout_s} s "
                                       f"({ended} of {counts.get('total', 0)} requests ended)")
                time.sleep(poll_s)
        finally:
            bar.close()
        if batch["status"] == "failed":
            raise BatchFailed(batch)
        return batch

    def results(self, order: str = "file") -> Iterator[dict]:
        """The output lines as dicts: the output file, then the error file (requests that expired, were
        cancelled or failed).  ``order="file"`` streams them line by line as the server wrote them;
        ``order="custom_id"`` reads them all and sorts by custom id (numeric ids by number).
        The batch must have ended (see :meth:`wait`)."""
        if order not in RESULT_ORDERS:
            raise ValueError(f"order {order!r}: one of {RESULT_ORDERS}")
        batch = self.status()
        if batch["status"] not in ENDED_STATUSES:
            raise SluiceError(None, {"message": f"batch {self.id} is {batch['status']}: its results are "
                                                "written when it ends; wait() for it first"})
        files = [file_id for file_id in (batch.get("output_file_id"), batch.get("error_file_id")) if file_id]
        lines = (line for file_id in files for line in self.client.file_lines(file_id))
        if order == "custom_id":
            return iter(sorted(lines, key=custom_id_key))
        return lines

    def cancel(self) -> dict:
        """Ask the server to cancel: queued requests leave the lane at once, running ones are aborted; the
        batch object (``cancelling``, then ``cancelled`` with the results finished so far)."""
        return self.client._check(self.client.http.post(f"/v1/batches/{self.id}/cancel"))


class Batches:
    """``client.batches``: submit, get and list batches."""

    def __init__(self, client: "SluiceClient"):
        self.client = client

    def submit(self, prompts_or_path: Sequence[str] | Mapping[str, str] | str | os.PathLike, *,
               deadline: float | str | datetime.timedelta = "24h", max_tokens: int | None = None,
               chat: bool = True, metadata: dict[str, str] | None = None, endpoint: str | None = None,
               **options) -> BatchJob:
        """Run a batch: ``prompts_or_path`` is a list of prompts (or a mapping of custom id to prompt), from
        which the JSONL input is written here, with ``max_tokens`` (None: the server's default), ``options``
        and the served model in every body; or the path of a .jsonl file already in the Batch input format,
        sent as it is.
        ``deadline``: seconds from now, a timedelta or a duration such as ``"2h"`` (at most 24h); every
        request's deadline.  ``endpoint``: by default the chat endpoint (``chat=False``: completions) for
        prompts, and the first line's ``url`` for a file.  The batch is created ``validating``; a file the
        server refuses to upload, or a batch it refuses to create, raises :class:`SluiceError`."""
        window = completion_window(deadline)
        if isinstance(prompts_or_path, (str, os.PathLike)):
            path = Path(prompts_or_path)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such file (a list of prompts goes in a list)")
            if max_tokens is not None or options:
                raise TypeError("max_tokens and body options apply to prompts; a .jsonl file's lines carry "
                                "their own bodies")
            endpoint = endpoint or first_line_url(path) or CHAT_ENDPOINT
            with path.open("rb") as content:
                uploaded = self.client.upload_file(content, filename=path.name)
        else:
            endpoint = endpoint or (CHAT_ENDPOINT if chat else COMPLETIONS_ENDPOINT)
            lines = batch_input_lines(prompts_or_path, model=self.client.model,
                                      chat=endpoint == CHAT_ENDPOINT, max_tokens=max_tokens, **options)
            # On disk, not in memory: 50,000 prompts are tens of megabytes of JSON.
            with tempfile.TemporaryFile() as content:
                write_jsonl(lines, content)
                content.seek(0)
                uploaded = self.client.upload_file(content, filename="prompts.jsonl")
        body = {"input_file_id": uploaded["id"], "endpoint": endpoint, "completion_window": window,
                **({"metadata": metadata} if metadata is not None else {})}
        try:
            created = self.client._check(self.client.http.post("/v1/batches", json=body))
        except SluiceError:
            self.client.http.delete(f"/v1/files/{uploaded['id']}")  # no batch will read it
            raise
        return BatchJob(self.client, created["id"])

    def get(self, batch_id: str) -> BatchJob:
        """The batch of that id (a 404 raises :class:`SluiceError`)."""
        job = BatchJob(self.client, batch_id)
        job.status()
        return job

    def list(self, limit: int = 20, after: str | None = None) -> dict:
        """A page of batches, newest first: OpenAI's list object (``data``, ``has_more``, ``last_id``; pass
        ``last_id`` as ``after`` for the next page)."""
        params = {"limit": limit, **({"after": after} if after else {})}
        return self.client._check(self.client.http.get("/v1/batches", params=params))


# --- the per-request path ---------------------------------------------------------------------------------
@dataclass
class AsyncRequestsJob:
    """Requests submitted one by one with ``Prefer: respond-async`` (:meth:`SluiceClient.submit_batch`)."""

    client: "SluiceClient"
    request_ids: list[str]
    deadline: float | None = None
    results: dict[str, dict] = field(default_factory=dict)

    def status(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for request_id in self.request_ids:
            status = self.client.request(request_id)["status"]
            counts[status] = counts.get(status, 0) + 1
        return counts

    def wait(self, poll_s: float = 2.0, timeout_s: float | None = None, progress: bool = True) -> list[dict]:
        """Block until every request is done (or failed); results in submission order."""
        started = time.monotonic()
        bar = tqdm(total=len(self.request_ids), desc="batch", disable=not progress)
        pending = [r for r in self.request_ids if r not in self.results]
        while pending:
            for request_id in list(pending):
                reply = self.client.request(request_id)
                if reply["status"] == "done":
                    self.results[request_id] = reply["result"]
                elif reply["status"] == "failed":
                    self.results[request_id] = {"error": reply.get("error", "failed")}
                else:
                    continue
                pending.remove(request_id)
                bar.update()
            if pending:
                if timeout_s is not None and time.monotonic() - started > timeout_s:
                    bar.close()
                    raise TimeoutError(f"{len(pending)} of {len(self.request_ids)} requests not done in {timeout_s}s")
                time.sleep(poll_s)
        bar.close()
        return [self.results[r] for r in self.request_ids]


class SluiceClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", model: str | None = None, timeout_s: float = 60,
                 api_key: str | None = None):
        """``api_key``: sent as ``Authorization: Bearer``; unset, ``SLUICE_API_KEY`` (none: no header)."""
        api_key = api_key if api_key is not None else os.environ.get("SLUICE_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s, headers=headers)
        self._model = model
        self.batches = Batches(self)

    @property
    def model(self) -> str:
        if self._model is None:
            self._model = self._check(self.http.get("/v1/models"))["data"][0]["id"]
        return self._model

    def _check(self, response: httpx.Response) -> dict:
        if response.status_code >= 400:
            raise error_of(response)
        return response.json()

    def upload_file(self, content: IO[bytes], *, filename: str, purpose: str = "batch") -> dict:
        """``POST /v1/files``: the file object. ``content`` is streamed, not read whole."""
        files = {"file": (filename, content, "application/jsonl")}
        return self._check(self.http.post("/v1/files", data={"purpose": purpose}, files=files))

    def file_lines(self, file_id: str) -> Iterator[dict]:
        """A JSONL file's lines as dicts, streamed from ``GET /v1/files/{id}/content``."""
        with self.http.stream("GET", f"/v1/files/{file_id}/content") as response:
            if response.status_code >= 400:
                response.read()
                raise error_of(response)
            for line in response.iter_lines():
                if line.strip():
                    yield json.loads(line)

    def request(self, request_id: str) -> dict:
        return self._check(self.http.get(f"/v1/sluice/requests/{request_id}"))

    def submit(self, prompt: str, *, max_tokens: int = 256, deadline_s: float | None = None,
               chat: bool = True, **options) -> str:
        """One request to the batch lane, answered later: its id for :meth:`request`."""
        body = {"model": self.model, "max_tokens": max_tokens, **options,
                "sluice": {"slo": "batch", **({"deadline": deadline_s} if deadline_s is not None else {})}}
        if chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        path = CHAT_ENDPOINT if chat else COMPLETIONS_ENDPOINT
        return self._check(self.http.post(path, json=body, headers={"Prefer": "respond-async"}))["id"]

    def submit_batch(self, prompts: list[str], *, max_tokens: int = 256, deadline_s: float | None = None,
                     concurrency: int = 16, progress: bool = True, **options) -> AsyncRequestsJob:
        """The per-request path: one async request per prompt (``submit``), each polled by ``wait``.
        Prefer :meth:`Batches.submit` (``client.batches.submit``), which makes one batch of them.
        The first refusal raises before the rest are sent."""
        if prompts:
            first = self.submit(prompts[0], max_tokens=max_tokens, deadline_s=deadline_s, **options)
        else:
            return AsyncRequestsJob(self, [])
        bar = tqdm(total=len(prompts), desc="submitting", disable=not progress, initial=1)

        def one(prompt):
            request_id = self.submit(prompt, max_tokens=max_tokens, deadline_s=deadline_s, **options)
            bar.update()
            return request_id

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            rest = list(pool.map(one, prompts[1:]))
        bar.close()
        return AsyncRequestsJob(self, [first, *rest])

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "SluiceClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def error_of(response: httpx.Response) -> SluiceError:
    """The API's error answer as a SluiceError (its ``error`` object; the text when it is not JSON)."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if not isinstance(error, dict):
        error = {"message": response.text.strip() or response.reason_phrase}
    return SluiceError(response.status_code, error)
