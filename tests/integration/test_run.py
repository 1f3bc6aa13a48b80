"""`sluice run` on a machine with no Redis configured: embedded Valkey, API, worker, Flower; a killed child is
restarted; Ctrl-C stops all."""

from __future__ import annotations

import os
import re
import signal

import httpx
import openai
import psutil
import pytest

from core.processes import http_ok
from tests.conftest import Process, free_port, wait_until

pytestmark = pytest.mark.integration


def test_ctrl_c_stops_sluice_run_cleanly_valkey_last(model_dir, log_dir, tmp_path):
    api_port, flower_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(SLUICE_DATA_DIR=str(tmp_path / "data"), SLUICE_MODEL=str(model_dir))
    # In its own session, so its process group is what a terminal's foreground group would be.
    run = Process("sluice-run", ["run", "--port", str(api_port), "--flower-port", str(flower_port)], env, log_dir)
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{api_port}/healthz"), 180, "the API", interval=0.5, process=run)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{api_port}/v1", api_key="unused", timeout=300)
        reply = client.chat.completions.create(model="sluice-tiny-llama", max_tokens=5,
                                               messages=[{"role": "user", "content": "hello"}],
                                               extra_body={"ignore_eos": True})
        assert reply.usage.completion_tokens == 5
        assert "embedded valkey" in run.log_tail(200).lower()

        wait_until(lambda: http_ok(f"http://127.0.0.1:{flower_port}/api/workers?refresh=1"), 120, "Flower",
                   interval=1, process=run)
        workers = httpx.get(f"http://127.0.0.1:{flower_port}/api/workers?refresh=1", timeout=10).json()
        assert any(name.startswith("sluice-") for name in workers), workers

        # A child that dies (SIGKILL, as the OOM killer would) is restarted and said so; the stack keeps
        # serving.  The API, not the worker: its restart takes seconds, a worker's minutes here (the
        # restart decision is tested in tests/unit/test_supervision.py; a SIGKILLed worker's engine
        # processes in test_resilience.py).
        api = next(p for p in run.descendants() if p.ppid() == run.pid and " api " in f" {' '.join(p.cmdline())} ")
        os.kill(api.pid, signal.SIGKILL)
        wait_until(lambda: f"api (pid {api.pid}) exited with status -9; restarting it now" in run.log_tail(400), 30,
                   "the restart logged", process=run)
        wait_until(lambda: http_ok(f"http://127.0.0.1:{api_port}/healthz"), 180, "the restarted API", interval=0.5,
                   process=run)
        reply = client.completions.create(model="sluice-tiny-llama", prompt="hi", max_tokens=3,
                                          extra_body={"ignore_eos": True})
        assert reply.usage.completion_tokens == 3

        descendants = run.descendants()
        assert len(descendants) >= 4  # valkey, api, worker (+ its engine), flower
        valkey = next(p for p in descendants if "valkey" in p.name())
        assert os.getsid(valkey.pid) == valkey.pid  # its own session: the Ctrl-C below does not reach it

        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground process group
        status = run.wait(120)
        output = run.log_path.read_text(errors="replace")
        assert status == 0, output[-6000:]
        assert "Traceback" not in output, output[output.index("Traceback") - 2000:][:8000]
        gone, alive = psutil.wait_procs(descendants, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
        # Reverse start order: the API stops taking requests first, the embedded Valkey goes last.
        stopped = re.findall(r"stopping (api|worker-0|flower|the embedded Valkey)\b", output)
        assert stopped == ["api", "worker-0", "flower", "the embedded Valkey"], stopped
    finally:
        run.stop()
