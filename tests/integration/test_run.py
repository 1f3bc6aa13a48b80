"""`sluice run` on a machine with no Redis configured: embedded Valkey, API, worker, Flower; Ctrl-C stops all."""

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


@pytest.mark.timeout(1200)  # two engine starts one after the other (each minutes on a loaded CPU host)
def test_sluice_run_restarts_a_killed_worker_and_says_so(model_dir, log_dir, tmp_path):
    """A worker SIGKILLed under `sluice run` (as the OOM killer would) is restarted, with a log line; its engine
    process does not outlive it; the stack keeps serving."""
    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(SLUICE_DATA_DIR=str(tmp_path / "data"), SLUICE_MODEL=str(model_dir), SLUICE_QUEUE_POLICY="fcfs")
    run = Process("sluice-run-restart", ["run", "--port", str(api_port), "--no-flower"], env, log_dir)
    base = f"http://127.0.0.1:{api_port}"

    def ready_workers() -> int:
        try:
            return httpx.get(base + "/healthz", timeout=5).json().get("registered_workers", 0)
        except (httpx.HTTPError, ValueError):
            return 0
    try:
        wait_until(lambda: ready_workers() == 1, 400, "a ready worker", interval=1, process=run)
        # A direct child of `sluice run` (Celery retitles it: "[celeryd: sluice-<pid>@host:MainProcess] ... (worker)").
        worker = next(p for p in run.descendants() if p.ppid() == run.pid and "worker" in " ".join(p.cmdline()))
        engine_side = [p for p in worker.children(recursive=True) if "EngineCore" in p.name()]
        assert engine_side, [(p.pid, p.name()) for p in worker.children(recursive=True)]
        os.kill(worker.pid, signal.SIGKILL)
        wait_until(lambda: "worker-0 (pid %d) exited with status -9; restarting it now" % worker.pid
                   in run.log_tail(400), 30, "the restart logged", process=run)
        gone, alive = psutil.wait_procs(engine_side, timeout=15)
        assert not alive, [(p.pid, p.name()) for p in alive]
        # The killed worker's heartbeat expires (TTL), then the new one (another id) says ready.
        wait_until(lambda: ready_workers() == 0, 60, "the killed worker's heartbeat gone", interval=0.5, process=run)
        wait_until(lambda: ready_workers() == 1, 400, "the restarted worker ready", interval=1, process=run)
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", timeout=300)
        reply = client.completions.create(model="sluice-tiny-llama", prompt="hi", max_tokens=3,
                                          extra_body={"ignore_eos": True})
        assert reply.usage.completion_tokens == 3
        os.killpg(run.pid, signal.SIGINT)
        assert run.wait(120) == 0
    finally:
        run.stop()
