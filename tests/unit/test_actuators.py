"""Actuators without engines: the pure pieces (Docker run kwargs, Kubernetes patch bodies, scale-in
choice, clamping) and the Docker/Kubernetes actuators' control flow against in-memory fakes."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import redis

from broker.heartbeat import WorkerHeartbeat, write_heartbeat
from scaler.actuators import ActuationResult, Actuator, InstanceInfo, choose_to_drain, clamp_target, make_actuator, plan_scale
from scaler.actuators.base import count_instances
from scaler.actuators.docker_actuator import (
    DockerActuator, DockerConfig, container_spec, device_requests, free_device, list_filters,
)
from scaler.actuators.kubernetes_actuator import (
    DELETION_COST, KubernetesConfig, deletion_cost_patch, deployment_manifest, deployment_name, pod_state,
    pool_count, scale_patch,
)
from scaler.actuators.local import LocalActuator, worker_command
from scaler.state import PoolObservation


def inst(name, state="ready", inflight=None, started_at=0.0, pool="mixed"):
    return InstanceInfo(instance_id=name, pool=pool, state=state, worker_id=name, inflight=inflight,
                        started_at=started_at)


# --- interface and pure helpers ----------------------------------------------------------------
def test_importing_the_package_does_not_import_the_sdks():
    assert "scaler.actuators" in sys.modules
    code = "import sys, scaler.actuators; assert 'docker' not in sys.modules and 'kubernetes' not in sys.modules"
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True)


def test_clamp_target():
    assert clamp_target(-3) == 0
    assert clamp_target(5, maximum=4) == 4
    assert clamp_target(0, minimum=1) == 1
    assert clamp_target(2.2, maximum=10) == 3  # a fractional target rounds up
    assert clamp_target(float("inf"), maximum=8) == 8
    with pytest.raises(ValueError):
        clamp_target(float("nan"))


def test_least_loaded_selection():
    instances = [inst("busy", inflight=9, started_at=1), inst("idle-old", inflight=0, started_at=1),
                 inst("idle-young", inflight=0, started_at=5), inst("cold", state="starting", started_at=9),
                 inst("leaving", state="draining", inflight=0), inst("mid", inflight=2)]
    order = [i.instance_id for i in choose_to_drain(instances, 10)]
    # starting first (they serve nothing), then by in-flight, youngest first on ties; draining never.
    assert order == ["cold", "idle-young", "idle-old", "mid", "busy"]
    assert [i.instance_id for i in choose_to_drain(instances, 2)] == ["cold", "idle-young"]
    assert choose_to_drain(instances, 0) == []
    # a ready instance without a load report is drained last
    assert choose_to_drain([inst("unknown"), inst("known", inflight=50)], 1)[0].instance_id == "known"


def test_plan_scale_is_idempotent_and_caps_starts():
    ready2 = [inst("a", inflight=1), inst("b", inflight=0)]
    assert plan_scale(ready2, 2).start == 0 and plan_scale(ready2, 2).drain == []
    plan = plan_scale(ready2, 1)
    assert [i.instance_id for i in plan.drain] == ["b"]
    # draining instances do not count: after draining b, target 1 is already met
    assert plan_scale([inst("a", inflight=1), inst("b", state="draining")], 1).drain == []
    plan = plan_scale([inst("s", state="starting")], 5, max_starting=2)
    assert (plan.start, plan.pending) == (1, 3)
    assert plan_scale([], 3, max_starting=None).start == 3


def test_instance_load_and_draining_come_from_the_heartbeat():
    beat = WorkerHeartbeat(worker_id="w@h", inflight=3, admission_limit=64)
    info = InstanceInfo.of("c-1", "mixed", "ready", beat)
    assert (info.worker_id, info.state, info.inflight, info.admission_limit) == ("w@h", "ready", 3, 64)
    # a worker that says it drains is draining, whoever told it to: it is no scale-in candidate
    leaving = InstanceInfo.of("c-2", "mixed", "ready", WorkerHeartbeat(worker_id="x@h", draining=True))
    assert leaving.state == "draining" and choose_to_drain([leaving], 1) == []
    unknown = InstanceInfo.of("c-3", "mixed", "starting", None, started_at=4.0)
    assert (unknown.state, unknown.inflight, unknown.worker_id, unknown.started_at) == ("starting", None, None, 4.0)
    assert count_instances("mixed", [info, leaving, unknown]) == PoolObservation(pool="mixed", ready=1, starting=1,
                                                                                 draining=1)


def test_pool_observation_and_result():
    assert PoolObservation(pool="mixed", ready=2, starting=1, draining=4).provisioned == 3
    result = ActuationResult(pool="mixed", requested=9, target=4, before=PoolObservation(pool="mixed", ready=2),
                             started=("x", "y"))
    assert result.changed and result.ok and "mixed: 2 -> 4" in result.describe()


def test_actuator_protocol():
    class Fake:
        def current(self, pool): return PoolObservation(pool=pool)
        def instances(self, pool): return []
        def scale(self, pool, target):
            return ActuationResult(pool=pool, requested=target, target=target, before=self.current(pool))
        def close(self): pass

    assert isinstance(Fake(), Actuator)
    assert not isinstance(object(), Actuator)


def test_make_actuator_kinds():
    with pytest.raises(ValueError):
        make_actuator("nomad")
    actuator = make_actuator("local", redis=SimpleNamespace(), redis_url="redis://x:1/0",
                             command_factory=lambda p, w: ["true"], log_dir="/tmp/sluice-test-actuator-logs")
    assert isinstance(actuator, LocalActuator) and actuator.env["SLUICE_REDIS_URL"] == "redis://x:1/0"
    with pytest.raises(ValueError):
        actuator.scale("gpu", 1)


def test_default_worker_command():
    argv = worker_command("mixed", "sluice-mixed-0@h", ["--admission-limit", "32"], python="/py")
    assert argv == ["/py", "-m", "sluice.cli", "worker", "--pool", "mixed", "--lanes", "interactive,batch",
                    "--worker-id", "sluice-mixed-0@h", "--admission-limit", "32"]
    assert worker_command("batch", "w", python="p")[5:8] == ["batch", "--lanes", "batch"]


# --- docker: pure spec building ----------------------------------------------------------------
def test_container_spec():
    config = DockerConfig(image="reg/sluice:1", redis_url="redis://redis:6379/0", network="sluice-net",
                          host="gpu-host", extra_args=("--admission-limit", "32"), environment={"HF_HOME": "/hf"})
    spec = container_spec("interactive", 3, config)
    assert spec["image"] == "reg/sluice:1" and spec["detach"] is True
    assert spec["name"] == spec["hostname"] == "sluice-worker-interactive-3"
    assert spec["command"] == ["sluice", "worker", "--pool", "interactive", "--lanes", "interactive",
                               "--worker-id", "sluice-interactive-3@gpu-host", "--admission-limit", "32"]
    assert spec["labels"] == {"sluice.managed": "true", "sluice.pool": "interactive",
                              "sluice.worker_id": "sluice-interactive-3@gpu-host", "sluice.index": "3"}
    assert spec["environment"]["SLUICE_REDIS_URL"] == "redis://redis:6379/0"
    assert spec["environment"]["HF_HOME"] == "/hf"
    assert spec["device_requests"] == [{"driver": "", "count": 1, "capabilities": [["gpu"]]}]
    assert spec["network"] == "sluice-net" and spec["stop_signal"] == "SIGTERM" and spec["init"] is True
    mixed = container_spec("mixed", 0, config)
    assert mixed["command"][4:6] == ["--lanes", "interactive,batch"]
    with pytest.raises(ValueError):
        container_spec("gpu", 0, config)


def test_container_spec_gpus():
    assert "device_requests" not in container_spec("batch", 0, DockerConfig(gpu_count=None, network=None))
    config = DockerConfig(gpu_device_ids=("0", "1"))
    spec = container_spec("batch", 1, config, device_id=free_device(config, {"0"}))
    assert spec["device_requests"] == [{"driver": "", "device_ids": ["1"], "capabilities": [["gpu"]]}]
    assert spec["labels"]["sluice.gpu"] == "1"
    with pytest.raises(RuntimeError):
        free_device(config, {"0", "1"})
    assert free_device(DockerConfig(), set()) is None


def test_device_requests_are_valid_docker_types():
    docker = pytest.importorskip("docker")
    request = docker.types.DeviceRequest(**device_requests(DockerConfig())[0])
    assert request == docker.types.DeviceRequest(count=1, capabilities=[["gpu"]])
    from docker.models.containers import _create_container_args

    args = _create_container_args({**container_spec("mixed", 0, DockerConfig(redis_url="redis://r/0")),
                                   "version": "1.44"})
    assert args["host_config"]["DeviceRequests"][0]["Count"] == 1
    assert args["host_config"]["Init"] is True


def test_list_filters():
    assert list_filters("batch") == {"label": ["sluice.managed=true", "sluice.pool=batch"]}
    assert list_filters(None, DockerConfig(labels={"fleet": "a"})) == {"label": ["fleet=a", "sluice.managed=true"]}


class FakeContainer:
    def __init__(self, engine, spec):
        self.engine, self.spec = engine, spec
        self.name, self.id, self.labels = spec["name"], "id-" + spec["name"], spec["labels"]
        self.status, self.attrs, self.stopped_with = "running", {"State": {"ExitCode": 0}}, None

    def stop(self, timeout):
        self.stopped_with = timeout
        self.status = "exited"

    def remove(self):
        self.engine.containers.items.remove(self)


class FakeContainers:
    def __init__(self, engine):
        self.engine, self.items = engine, []

    def run(self, **spec):
        assert spec["name"] not in {c.name for c in self.items}
        self.items.append(FakeContainer(self.engine, spec))

    def list(self, all, filters):  # noqa: A002 - docker-py's keyword
        include_stopped = all
        wanted = set(filters["label"])
        return [c for c in self.items if (include_stopped or c.status == "running")
                and wanted <= {f"{a}={b}" for a, b in c.labels.items()}]

    def get(self, name):
        import docker.errors

        for c in self.items:
            if c.name == name:
                return c
        raise docker.errors.NotFound(name)


@pytest.fixture
def heartbeats_redis(machine_redis_url):
    """A real Redis for the heartbeats the actuators read (the Docker and Kubernetes APIs are the fakes)."""
    client = redis.Redis.from_url(machine_redis_url)
    client.flushdb()
    yield client
    client.flushdb()


def beat(client, worker_id: str, inflight: int) -> None:
    write_heartbeat(client, WorkerHeartbeat(worker_id=worker_id, inflight=inflight), ttl_s=60)


def test_docker_actuator_flow_with_a_fake_engine(heartbeats_redis):
    pytest.importorskip("docker")
    engine = SimpleNamespace()
    engine.containers = FakeContainers(engine)
    engine.close = lambda: None
    actuator = DockerActuator(client=engine, redis=heartbeats_redis, host="h", gpu_device_ids=("0", "1", "2"),
                              drain_timeout_s=120)
    result = actuator.scale("mixed", 3)
    assert result.started == ("sluice-worker-mixed-0", "sluice-worker-mixed-1", "sluice-worker-mixed-2")
    assert sorted(c.labels["sluice.gpu"] for c in engine.containers.items) == ["0", "1", "2"]
    assert actuator.current("mixed") == PoolObservation(pool="mixed", starting=3)  # running, no heartbeat yet
    for worker_id, inflight in (("sluice-mixed-0@h", 4), ("sluice-mixed-1@h", 0), ("sluice-mixed-2@h", 7)):
        beat(heartbeats_redis, worker_id, inflight)
    assert actuator.current("mixed") == PoolObservation(pool="mixed", ready=3)
    assert not actuator.scale("mixed", 3).changed
    result = actuator.scale("mixed", 1)
    assert result.drained == ("sluice-worker-mixed-1", "sluice-worker-mixed-0")  # least loaded first
    actuator.wait_drained()
    stopped = {c.name: c.stopped_with for c in engine.containers.items if c.stopped_with}
    assert stopped == {"sluice-worker-mixed-1": 120, "sluice-worker-mixed-0": 120}
    assert actuator.current("mixed") == PoolObservation(pool="mixed", ready=1)  # exited ones are reaped, removed
    assert [c.name for c in engine.containers.items] == ["sluice-worker-mixed-2"]
    # the freed index and GPU are reused
    assert actuator.scale("mixed", 2).started == ("sluice-worker-mixed-0",)
    assert {c.labels["sluice.gpu"] for c in engine.containers.items} == {"0", "2"}
    actuator.close()


# --- kubernetes: pure bodies ----------------------------------------------------------------------
def test_kubernetes_patch_bodies():
    assert scale_patch(4) == {"spec": {"replicas": 4}}
    assert deletion_cost_patch(3) == {"metadata": {"annotations": {DELETION_COST: "3"}}}
    assert deletion_cost_patch(None) == {"metadata": {"annotations": {DELETION_COST: "0"}}}
    config = KubernetesConfig(deployment_names={"batch": "llm-batch"})
    assert deployment_name("batch", config) == "llm-batch"
    assert deployment_name("mixed", config) == "sluice-worker-mixed"


def test_kubernetes_counts_and_pod_state():
    assert pool_count("batch", 3, 1, 2) == PoolObservation(pool="batch", ready=1, starting=2, draining=2)
    assert pool_count("batch", None, None, 0) == PoolObservation(pool="batch")
    assert pool_count("batch", 1, 3, 0) == PoolObservation(pool="batch", ready=1)  # surplus ready pods are leaving
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert pod_state(ready) == "ready"
    assert pod_state({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}) == "starting"
    assert pod_state({**ready, "metadata": {"deletion_timestamp": "2026-01-01T00:00:00Z"}}) == "draining"


def test_deployment_manifest():
    manifest = deployment_manifest("mixed", KubernetesConfig(image="reg/sluice:1", redis_url="redis://r/0",
                                                             termination_grace_period_s=900))
    spec = manifest["spec"]["template"]["spec"]
    assert manifest["metadata"]["name"] == "sluice-worker-mixed" and manifest["spec"]["replicas"] == 0
    assert spec["terminationGracePeriodSeconds"] == 900
    container = spec["containers"][0]
    assert container["command"][:6] == ["sluice", "worker", "--pool", "mixed", "--lanes", "interactive,batch"]
    assert container["command"][7].endswith("@$(POD_NAME)")
    assert container["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    selector = manifest["spec"]["selector"]["matchLabels"]
    assert all(manifest["spec"]["template"]["metadata"]["labels"][k] == v for k, v in selector.items())


def test_kubernetes_actuator_flow_with_fake_apis(heartbeats_redis):
    pytest.importorskip("kubernetes")
    from kubernetes import client as k8s

    from scaler.actuators.kubernetes_actuator import KubernetesActuator

    def pod(name, ready=True, deleting=False):
        return k8s.V1Pod(metadata=k8s.V1ObjectMeta(name=name, deletion_timestamp="2026-01-01T00:00:00Z" if deleting else None),
                         status=k8s.V1PodStatus(conditions=[k8s.V1PodCondition(type="Ready", status=str(ready))]))

    deployment = k8s.V1Deployment(
        metadata=k8s.V1ObjectMeta(name="sluice-worker-mixed"),
        spec=k8s.V1DeploymentSpec(replicas=2, selector=k8s.V1LabelSelector(match_labels={"sluice.pool": "mixed"}),
                                  template=k8s.V1PodTemplateSpec()),
        status=k8s.V1DeploymentStatus(ready_replicas=2))
    pods = [pod("p-a"), pod("p-b"), pod("p-old", deleting=True)]
    calls = []
    apps = SimpleNamespace(
        read_namespaced_deployment=lambda name, ns: deployment,
        patch_namespaced_deployment_scale=lambda name, ns, body: calls.append(("scale", name, ns, body)))
    core = SimpleNamespace(
        list_namespaced_pod=lambda ns, label_selector: (calls.append(("list", label_selector)), SimpleNamespace(items=pods))[1],
        patch_namespaced_pod=lambda name, ns, body: calls.append(("pod", name, body)))

    beat(heartbeats_redis, "sluice-mixed-p-a@p-a", 5)
    beat(heartbeats_redis, "sluice-mixed-p-b@p-b", 1)
    actuator = KubernetesActuator(api_client=k8s.ApiClient(), redis=heartbeats_redis, namespace="llm")
    actuator.apps, actuator.core = apps, core
    assert actuator.current("mixed") == PoolObservation(pool="mixed", ready=2, draining=1)
    assert {i.instance_id: (i.state, i.inflight) for i in actuator.instances("mixed")} == \
        {"p-a": ("ready", 5), "p-b": ("ready", 1), "p-old": ("draining", None)}
    calls.clear()
    assert not actuator.scale("mixed", 2).changed and not [c for c in calls if c[0] == "scale"]
    result = actuator.scale("mixed", 1)
    assert result.drained and result.ok
    assert ("pod", "p-a", deletion_cost_patch(5)) in calls and ("pod", "p-b", deletion_cost_patch(1)) in calls
    assert not [c for c in calls if c[0] == "pod" and c[1] == "p-old"]
    assert calls[-1] == ("scale", "sluice-worker-mixed", "llm", {"spec": {"replicas": 1}})
    assert ("list", "sluice.pool=mixed") in calls
    actuator.close()


def test_docker_options_come_from_settings_without_host_paths():
    from core.settings import Settings
    from scaler.actuators import docker_options
    from scaler.actuators.docker_actuator import DockerConfig, container_spec

    settings = Settings(redis_url="redis://127.0.0.1:6379/0", model="/home/me/model", admission_limit=8,
                        docker_image="registry/sluice:1.2", docker_network="fleet",
                        docker_redis_url="redis://redis:6379/0", docker_gpus_per_worker=1,
                        docker_gpu_device_ids=["0", "1"])
    options = docker_options(settings)
    config = DockerConfig(**options)
    assert (config.image, config.network, config.redis_url) == ("registry/sluice:1.2", "fleet", "redis://redis:6379/0")
    assert config.environment["SLUICE_REDIS_URL"] == "redis://redis:6379/0"
    assert config.environment["SLUICE_ADMISSION_LIMIT"] == "8"
    assert "SLUICE_MODEL" not in config.environment and not any(k.startswith("SLUICE_DOCKER_") for k in config.environment)
    assert (config.gpu_count, list(config.gpu_device_ids)) == (1, ["0", "1"])
    assert DockerConfig(**docker_options(Settings(docker_gpus_per_worker=0))).gpu_count is None
    spec = container_spec("mixed", 0, config, device_id="1")
    assert spec["image"] == "registry/sluice:1.2" and spec["network"] == "fleet"


def test_default_cpu_slots_one_set_per_engine_unless_the_operator_binds():
    from scaler.actuators.local import default_cpu_slots, least_used_slot
    import os

    cpus = sorted(os.sched_getaffinity(0))
    slots = default_cpu_slots({})
    assert slots == (tuple(str(c) for c in cpus) if len(cpus) > 1 else ())
    assert default_cpu_slots({"VLLM_CPU_OMP_THREADS_BIND": "0-1"}) == ()  # the operator's binding stands
    if len(cpus) >= 4:
        assert default_cpu_slots({"OMP_NUM_THREADS": "2"})[0] == f"{cpus[0]},{cpus[1]}"
    assert least_used_slot(("0", "1", "2"), ["0", "2"]) == "1"
    assert least_used_slot(("0", "1"), ["0", "1"]) == "0"
    assert least_used_slot(("0", "1"), ["0", "0", "1"]) == "1"
