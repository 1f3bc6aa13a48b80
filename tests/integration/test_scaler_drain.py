"""The live scaler sees a draining worker as draining: a real `sluice worker` (vLLM, the tiny model), started
and drained by the local actuator (SIGTERM to its main process: Celery's warm shutdown) while it holds a long
request, observed the way ``sluice scaler run`` observes (``ScalerService.observe`` + ``snapshot``).

Without the heartbeat's ``draining`` field the worker would still count as serving capacity until it exits,
i.e. for as long as its longest request runs.
"""

from __future__ import annotations

import contextlib

import os
import time

import pytest
import redis

from api.enqueue import Enqueuer
from broker.celery_app import create_app
from broker.heartbeat import read_heartbeats
from core.settings import Settings
from scaler.actuators.local import LocalActuator
from scaler.service import ScalerService
from tests.conftest import MACHINE_REDIS_URL, ROOT, engine_processes, require_redis, suspended, wait_until
from tests.integration.conftest import enqueue_direct

pytestmark = pytest.mark.integration

REDIS_URL = MACHINE_REDIS_URL.rsplit("/", 1)[0] + "/9"
MODEL = "sluice-tiny-llama"
# Long enough to outlast the drain and the observation (about 20 s on this 2-core CPU), so the worker holds it
# throughout; the actuator's close() kills the worker afterwards instead of waiting for it.
LONG = 1900


def test_a_drained_worker_holding_a_request_is_observed_draining_not_serving(model_dir, tmp_path):
    require_redis(REDIS_URL)
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(SLUICE_MODEL=str(model_dir), SLUICE_DATA_DIR=str(tmp_path / "data"), SLUICE_HEARTBEAT_TTL_S="10")
    settings = Settings(redis_url=REDIS_URL)
    app = create_app(settings)
    actuator = LocalActuator(redis=client, redis_url=REDIS_URL, env=env, log_dir=tmp_path, host="drain-test",
                             cwd=ROOT, drain_timeout_s=5)
    service = ScalerService(client, app, actuator, "chiron", settings.scaler, settings.scaler.slo.itl_s)

    def beat():
        return read_heartbeats(client).get(worker_id)

    def ready() -> bool:
        if actuator.exits:
            raise AssertionError(f"the worker exited; its log ends:\n{actuator.exits[0].log_path.read_text()[-3000:]}")
        return actuator.current("mixed").ready == 1

    held = contextlib.ExitStack()
    try:
        [worker_id] = actuator.scale("mixed", 1).started
        wait_until(ready, 240, "the worker's first heartbeat", interval=0.5)
        # Its engine is held from before the request is queued, so the request is still running when the
        # snapshot is read: the tiny model can finish 1,900 tokens before a heartbeat shows it taken, or within
        # the drain, on a quiet host (seen in CI twice: running_batch 0).
        engines = engine_processes(beat().pid)
        assert engines
        held.enter_context(suspended(engines))
        enqueue_direct(Enqueuer(app, client, {}, 1), "long-request", "batch", time.time(), LONG, model=MODEL)
        wait_until(lambda: beat().inflight == 1, 60, "the worker to take the request", interval=0.2)

        first = service.observe()
        assert [w.worker_id for w in service.snapshot(first).workers_in("mixed")] == [worker_id]  # serving
        service.previous_raw = first  # as after a global round: the next snapshot has rates, so is complete

        assert actuator.scale("mixed", 0).drained == (worker_id,)  # SIGTERM, as every scale-in does
        wait_until(lambda: beat().draining, 30, "the heartbeat to say draining", interval=0.2)
        snapshot = service.snapshot(service.observe())
        [worker] = snapshot.workers
        assert worker.worker_id == worker_id and worker.draining
        assert worker.running_batch == 1  # it still holds the request: draining, not gone
        assert snapshot.workers_in("mixed") == ()  # no serving capacity
        assert snapshot.complete
        mixed = snapshot.pool("mixed")
        assert (mixed.ready, mixed.draining, mixed.provisioned) == (0, 1, 0)
    finally:
        held.close()
        actuator.close()
