"""The local actuator against real processes and the machine's Redis (db 10), without vLLM.

The worker command is replaced by a tiny Python script that behaves like ``sluice worker`` towards the
actuator: a cold start, then its heartbeat (``broker.heartbeat.write_heartbeat``, TTL 10 s) every 0.5 s (its
``inflight`` read from a test key), and on SIGTERM a short "drain" (its heartbeat says ``draining``) before
it retires its heartbeat and exits with code 0.
"""

from __future__ import annotations

import os
import signal
import sys

import pytest
import redis

from core import keys
from scaler.actuators import make_actuator
from scaler.actuators.local import LocalActuator
from scaler.state import PoolObservation
from tests.conftest import MACHINE_REDIS_URL, ROOT, require_redis, wait_until

pytestmark = pytest.mark.integration

REDIS_URL = MACHINE_REDIS_URL.rsplit("/", 1)[0] + "/10"
HOST = "actuator-test"

FAKE_WORKER = r"""
import os, signal, sys, time
import redis
from broker.heartbeat import WorkerHeartbeat, retire_heartbeat, write_heartbeat
url, pool, worker_id, cold_start, drain_s = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
client = redis.Redis.from_url(url)
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(time.time()))
client.set("fake:cpus:" + worker_id, os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "unset"))
time.sleep(cold_start)
# Until SIGTERM: serve. After it: "finish the in-flight requests" for drain_s, saying so in the heartbeat.
while not stopping or time.time() < stopping[0] + drain_s:
    if client.get("fake:crash:" + worker_id):
        sys.exit(3)
    inflight = int(client.get("fake:inflight:" + worker_id) or 0)
    # the TTL outlasts a host stall (docs/architecture.md)
    write_heartbeat(client, WorkerHeartbeat(worker_id=worker_id, pool=pool, inflight=inflight, admission_limit=8,
                                            draining=bool(stopping), pid=os.getpid()), ttl_s=10)
    time.sleep(0.5)
retire_heartbeat(client, worker_id)
client.rpush("fake:drained", worker_id)
sys.exit(0)
"""


def fake_command(cold_start: float = 2.0, drain_s: float = 1.5):
    def factory(pool: str, worker_id: str) -> list[str]:
        return [sys.executable, "-c", FAKE_WORKER, REDIS_URL, pool, worker_id, str(cold_start), str(drain_s)]
    return factory


def clean(client: redis.Redis) -> None:
    for pattern in ("fake:*", f"sluice:worker:*@{HOST}"):
        for key in client.scan_iter(pattern):
            client.delete(key)
    client.delete(keys.WORKERS)


@pytest.fixture
def db10():
    require_redis(REDIS_URL)
    client = redis.Redis.from_url(REDIS_URL)
    clean(client)
    yield client
    clean(client)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); the actuator reaps its children, so this only covers the window before.
    return True


def test_scale_out_drains_least_loaded_and_close_stops_all(db10, tmp_path):
    actuator = make_actuator("local", redis=db10, redis_url=REDIS_URL, command_factory=fake_command(),
                             log_dir=tmp_path, host=HOST, max_starting=4, drain_timeout_s=15, cwd=ROOT)
    assert isinstance(actuator, LocalActuator)
    try:
        # 0 -> 2: both start, counted as starting until their first heartbeat.
        result = actuator.scale("mixed", 2)
        assert result.started == (f"sluice-mixed-0@{HOST}", f"sluice-mixed-1@{HOST}"), result
        assert result.before.provisioned == 0 and not result.drained and result.ok
        count = actuator.current("mixed")
        assert (count.ready, count.starting, count.draining) == (0, 2, 0)
        assert not actuator.scale("mixed", 2).changed  # idempotent while starting
        wait_until(lambda: actuator.current("mixed").ready == 2, 60, "two ready workers")
        assert actuator.current("mixed").starting == 0
        assert not actuator.scale("mixed", 2).changed  # idempotent once ready
        assert actuator.current("batch").provisioned == 0  # pools are separate

        # The OLDER worker is the least loaded, so the choice is by load, not by age.
        old, young = f"sluice-mixed-0@{HOST}", f"sluice-mixed-1@{HOST}"
        db10.set(f"fake:inflight:{old}", 0)
        db10.set(f"fake:inflight:{young}", 3)
        wait_until(lambda: {i.instance_id: i.inflight for i in actuator.instances("mixed")} == {old: 0, young: 3},
                   30, "heartbeats with the in-flight counts")
        old_pid, young_pid = actuator.pid(old), actuator.pid(young)

        # 2 -> 1: the least-loaded one drains and exits cleanly; the other keeps running.
        result = actuator.scale("mixed", 1)
        assert result.drained == (old,) and not result.started, result
        count = actuator.current("mixed")
        assert (count.ready, count.starting, count.draining) == (1, 0, 1)
        assert not actuator.scale("mixed", 1).changed  # the draining one no longer counts
        wait_until(lambda: actuator.current("mixed").draining == 0, 60, "the drained worker to exit")
        record = next(r for r in actuator.exits if r.worker_id == old)
        assert record.returncode == 0 and record.drained
        assert db10.lrange("fake:drained", 0, -1) == [old.encode()]  # it finished its "drain"
        assert not db10.exists(keys.worker_key(old))
        assert not alive(old_pid)
        assert alive(young_pid) and actuator.pid(young) == young_pid
        count = actuator.current("mixed")
        assert (count.ready, count.starting, count.draining) == (1, 0, 0)

        # A worker that dies on its own is reaped (not drained) and leaves the count; scale replaces it.
        assert actuator.scale("batch", 1).started == (f"sluice-batch-0@{HOST}",)
        wait_until(lambda: actuator.current("batch").ready == 1, 60, "the batch worker")
        db10.set(f"fake:crash:sluice-batch-0@{HOST}", 1)
        wait_until(lambda: actuator.current("batch").provisioned == 0, 60, "the crashed worker to be reaped")
        crash = next(r for r in actuator.exits if r.worker_id == f"sluice-batch-0@{HOST}")
        assert crash.returncode == 3 and not crash.drained
        assert actuator.scale("batch", 1).started == (f"sluice-batch-1@{HOST}",)
        # (ready first: a worker signalled before it installed its handlers dies of SIGTERM, which is
        # harmless while starting -- it holds no requests -- but is not the clean exit checked below)
        wait_until(lambda: actuator.current("batch").ready == 1, 60, "the replacement batch worker")
    finally:
        actuator.close()

    # close(): everything it started drained and exited cleanly.
    assert actuator.current("mixed") == PoolObservation(pool="mixed")
    assert actuator.current("batch") == PoolObservation(pool="batch")
    assert not alive(young_pid)
    drained = {r.worker_id: r.returncode for r in actuator.exits if r.drained}
    assert drained == {old: 0, young: 0, f"sluice-batch-1@{HOST}": 0}
    # (the crashed one's heartbeat key lapses on its own, as a real crashed worker's does)
    wait_until(lambda: not list(db10.scan_iter(f"sluice:worker:*@{HOST}")), 30, "every heartbeat key gone")


def test_max_starting_caps_a_scale_out_and_the_next_call_continues(db10, tmp_path):
    actuator = LocalActuator(redis=db10, redis_url=REDIS_URL, command_factory=fake_command(cold_start=0.5),
                             log_dir=tmp_path, host=HOST, max_starting=1, drain_timeout_s=15, cwd=ROOT)
    try:
        result = actuator.scale("interactive", 2)
        assert len(result.started) == 1 and result.pending == 1
        assert len(actuator.scale("interactive", 2).started) == 0  # still one starting
        wait_until(lambda: actuator.current("interactive").ready == 1, 60, "the first worker")
        assert len(actuator.scale("interactive", 2).started) == 1
        wait_until(lambda: actuator.current("interactive").ready == 2, 60, "the second worker")
    finally:
        actuator.close()
    assert all(r.returncode == 0 for r in actuator.exits) and len(actuator.exits) == 2


def test_a_worker_draining_on_its_own_counts_as_draining_and_is_replaced(db10, tmp_path):
    """Its heartbeat says draining (someone else sent the SIGTERM): no longer capacity, no scale-in candidate."""
    actuator = LocalActuator(redis=db10, redis_url=REDIS_URL, command_factory=fake_command(cold_start=0.5, drain_s=3),
                             log_dir=tmp_path, host=HOST, drain_timeout_s=15, cwd=ROOT)
    try:
        [first] = actuator.scale("batch", 1).started
        wait_until(lambda: actuator.current("batch").ready == 1, 60, "the worker")
        os.kill(actuator.pid(first), signal.SIGTERM)  # not through the actuator
        wait_until(lambda: actuator.current("batch") == PoolObservation(pool="batch", draining=1), 30,
                   "the heartbeat to say draining")
        assert [i.state for i in actuator.instances("batch")] == ["draining"]
        result = actuator.scale("batch", 1)
        assert result.started == (f"sluice-batch-1@{HOST}",) and not result.drained, result
        wait_until(lambda: actuator.current("batch") == PoolObservation(pool="batch", ready=1), 60,
                   "the replacement ready, the drained worker gone")
        [record] = actuator.exits
        assert (record.worker_id, record.returncode, record.drained) == (first, 0, False)  # drained, not by us
    finally:
        actuator.close()


# --- live Docker / Kubernetes tests: run only where an engine / a cluster answers ------------------
# A container that behaves like a worker towards the actuator: runs until SIGTERM, then "drains" and
# exits 0. Image: SLUICE_TEST_DOCKER_IMAGE / SLUICE_TEST_K8S_IMAGE (default busybox, pulled on first use).
SLEEPER = 'trap "sleep 0.5; exit 0" TERM; while :; do sleep 0.2; done'


def docker_engine():
    try:
        import docker
    except ImportError:
        pytest.skip("docker SDK not installed (pip install 'sluice[docker]')")
    if not os.environ.get("DOCKER_HOST") and not os.path.exists("/var/run/docker.sock"):
        pytest.skip("no Docker engine: DOCKER_HOST unset and no /var/run/docker.sock")
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"Docker engine does not answer a ping: {exc}")
    return client


def test_live_docker_actuator():
    import uuid

    from scaler.actuators.docker_actuator import DockerConfig

    client = docker_engine()
    fleet = uuid.uuid4().hex[:8]
    config = DockerConfig(image=os.environ.get("SLUICE_TEST_DOCKER_IMAGE", "busybox:latest"),
                          command_prefix=("sh", "-c", SLEEPER), pool_flags=False, gpu_count=None,
                          shm_size=None, name_prefix=f"sluice-test-{fleet}", labels={"sluice.test": fleet},
                          drain_timeout_s=20, remove_exited=True)
    actuator = make_actuator("docker", config=config, client=client)  # no Redis: running = ready
    try:
        assert len(actuator.scale("batch", 2).started) == 2
        wait_until(lambda: actuator.current("batch").ready == 2, 120, "two running containers")
        result = actuator.scale("batch", 1)
        assert len(result.drained) == 1
        actuator.wait_drained(60)
        wait_until(lambda: actuator.current("batch") == PoolObservation(pool="batch", ready=1), 30,
                   "one container left")
        assert actuator.exit_codes == {result.drained[0]: 0}  # SIGTERM -> drained -> exit 0
    finally:
        for container in client.containers.list(all=True, filters={"label": [f"sluice.test={fleet}"]}):
            container.stop(timeout=20)
            container.remove(force=True)
        actuator.close()


def test_live_kubernetes_actuator():
    import uuid

    try:
        from kubernetes import client as k8s
    except ImportError:
        pytest.skip("kubernetes client not installed (pip install 'sluice[kubernetes]')")
    from scaler.actuators.kubernetes_actuator import KubernetesConfig, deployment_manifest, kubeconfig_available

    if not kubeconfig_available():
        pytest.skip("no kubeconfig (KUBECONFIG or ~/.kube/config)")
    namespace = os.environ.get("SLUICE_TEST_K8S_NAMESPACE", "default")
    config = KubernetesConfig(namespace=namespace, name_prefix=f"sluice-test-{uuid.uuid4().hex[:8]}",
                              image=os.environ.get("SLUICE_TEST_K8S_IMAGE", "busybox:latest"),
                              command_prefix=("sh", "-c", SLEEPER), gpus_per_pod=0, termination_grace_period_s=30)
    actuator = make_actuator("kubernetes", config=config)
    apps = k8s.AppsV1Api(actuator.api_client)
    manifest = deployment_manifest("batch", config)
    apps.create_namespaced_deployment(namespace, manifest)
    try:
        assert actuator.current("batch") == PoolObservation(pool="batch")
        assert actuator.scale("batch", 2).started
        assert actuator.current("batch").provisioned == 2
        wait_until(lambda: actuator.current("batch").ready == 2, 180, "two ready pods", interval=1)
        assert actuator.scale("batch", 1).drained
        wait_until(lambda: actuator.current("batch") == PoolObservation(pool="batch", ready=1), 120, "one pod left",
                   interval=1)
        assert not actuator.scale("batch", 1).changed
    finally:
        apps.delete_namespaced_deployment(manifest["metadata"]["name"], namespace)
        actuator.close()


def test_each_worker_engine_gets_the_least_used_cpu_set(db10, tmp_path):
    """The CPU analogue of one GPU per worker: engines on separate cores, a freed core handed out again."""
    actuator = LocalActuator(redis=db10, redis_url=REDIS_URL, command_factory=fake_command(cold_start=0.5),
                             log_dir=tmp_path, host=HOST, drain_timeout_s=15, cwd=ROOT, cpu_slots=("0", "1"))
    try:
        first, second = actuator.scale("mixed", 2).started
        wait_until(lambda: actuator.current("mixed").ready == 2, 60, "two workers")
        cpus = {w: db10.get("fake:cpus:" + w).decode() for w in (first, second)}
        assert cpus == {first: "0", second: "1"}
        [third] = actuator.scale("batch", 1).started  # both cores hold one engine: the earliest again
        wait_until(lambda: db10.get("fake:cpus:" + third) is not None, 30, "the third worker")
        assert db10.get("fake:cpus:" + third).decode() == "0"
    finally:
        actuator.close()
