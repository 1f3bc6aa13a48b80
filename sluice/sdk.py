"""The Python SDK for batch submitters: submit many requests with a deadline, then collect the answers.

    from sluice.sdk import SluiceClient
    client = SluiceClient("http://127.0.0.1:8000")
    job = client.submit_batch(["Summarize ...", "Translate ..."], max_tokens=256, deadline_s=3600)
    for result in job.wait():          # a progress bar while it runs
        print(result["text"])

Requests go to the batch lane with ``Prefer: respond-async`` (the API answers 202 at once and keeps the
answer for a day); ``wait`` polls ``GET /v1/sluice/requests/{id}``.  A refused request raises
:class:`SluiceError` with the API's message before anything else is submitted.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
from tqdm import tqdm


class SluiceError(Exception):
    def __init__(self, status: int, error: dict):
        super().__init__(f"{status}: {error.get('message', error)}")
        self.status = status
        self.error = error


@dataclass
class BatchJob:
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
    def __init__(self, base_url: str = "http://127.0.0.1:8000", model: str | None = None, timeout_s: float = 60):
        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s)
        self._model = model

    @property
    def model(self) -> str:
        if self._model is None:
            self._model = self.http.get("/v1/models").json()["data"][0]["id"]
        return self._model

    def _check(self, response: httpx.Response) -> dict:
        if response.status_code >= 400:
            raise SluiceError(response.status_code, response.json().get("error", {"message": response.text}))
        return response.json()

    def request(self, request_id: str) -> dict:
        return self._check(self.http.get(f"/v1/sluice/requests/{request_id}"))

    def submit(self, prompt: str, *, max_tokens: int = 256, deadline_s: float | None = None,
               chat: bool = True, **options) -> str:
        body = {"model": self.model, "max_tokens": max_tokens, **options,
                "sluice": {"slo": "batch", **({"deadline": deadline_s} if deadline_s is not None else {})}}
        if chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        path = "/v1/chat/completions" if chat else "/v1/completions"
        return self._check(self.http.post(path, json=body, headers={"Prefer": "respond-async"}))["id"]

    def submit_batch(self, prompts: list[str], *, max_tokens: int = 256, deadline_s: float | None = None,
                     concurrency: int = 16, progress: bool = True, **options) -> BatchJob:
        """Submit every prompt to the batch lane; the first refusal raises before the rest are sent."""
        if prompts:
            first = self.submit(prompts[0], max_tokens=max_tokens, deadline_s=deadline_s, **options)
        else:
            return BatchJob(self, [])
        bar = tqdm(total=len(prompts), desc="submitting", disable=not progress, initial=1)

        def one(prompt):
            request_id = self.submit(prompt, max_tokens=max_tokens, deadline_s=deadline_s, **options)
            bar.update()
            return request_id

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            rest = list(pool.map(one, prompts[1:]))
        bar.close()
        return BatchJob(self, [first, *rest])

    def close(self) -> None:
        self.http.close()
