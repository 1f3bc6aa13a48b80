"""`sluice run` on a machine with no Redis configured: embedded Valkey, API, worker, Flower; Ctrl-C stops all."""

from __future__ import annotations

import os
import signal

import httpx
import openai
import psutil
import pytest

from bench.processes import http_ok
from tests.conftest import Process, free_port, wait_until

pytestmark = pytest.mark.integration


def test_sluice_run_embedded_valkey_flower_and_ctrl_c(model_dir, log_dir, tmp_path):
    api_port, flower_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(SLUICE_DATA_DIR=str(tmp_path / "data"), SLUICE_MODEL=str(model_dir))
    run = Process("sluice-run", ["run", "--port", str(api_port), "--flower-port", str(flower_port)], env, log_dir)
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{api_port}/healthz"), 180, "the API", interval=0.5, process=run)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{api_port}/v1", api_key="unused", timeout=180)
        reply = client.chat.completions.create(model="sluice-tiny-llama", max_tokens=5,
                                               messages=[{"role": "user", "content": "hello"}],
                                               extra_body={"ignore_eos": True})
        assert reply.usage.completion_tokens == 5
        assert "valkey" in run.log_tail(200).lower()

        wait_until(lambda: http_ok(f"http://127.0.0.1:{flower_port}/api/workers?refresh=1"), 120, "Flower",
                   interval=1, process=run)
        workers = httpx.get(f"http://127.0.0.1:{flower_port}/api/workers?refresh=1", timeout=10).json()
        assert any(name.startswith("sluice-") for name in workers), workers

        descendants = psutil.Process(run.pid).children(recursive=True)
        assert len(descendants) >= 4  # valkey, api, worker (+ its engine), flower
        run.popen.send_signal(signal.SIGINT)  # Ctrl-C
        assert run.popen.wait(60) == 0, run.log_tail()
        gone, alive = psutil.wait_procs(descendants, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        run.stop()
