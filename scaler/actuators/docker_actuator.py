"""Docker actuator: one container per worker instance, through the Docker Engine API (``docker`` SDK).

Containers carry the labels ``sluice.managed=true``, ``sluice.pool=<pool>``, ``sluice.worker_id`` and
``sluice.index``; the actuator finds its instances by those labels, so it survives a restart of the
scaler. Every Docker API argument is built by pure functions (:func:`container_spec`,
:func:`list_filters`) that the unit tests check without an engine.

Scale-in: ``container.stop(timeout=drain_timeout_s)`` on the least-loaded containers, in a background
thread: the engine sends SIGTERM (the worker's warm shutdown: stop consuming, finish in-flight work,
exit) and only SIGKILLs after ``drain_timeout_s``. Set that above the longest request you serve.
"""

from __future__ import annotations

import logging
import socket
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

from broker.heartbeat import read_heartbeats
from scaler.state import PoolObservation

from .base import (
    ActuationResult, InstanceInfo, check_pool, clamp_target, count_instances, plan_scale, pool_lanes,
)

log = logging.getLogger(__name__)

LABEL_MANAGED = "sluice.managed"
LABEL_POOL = "sluice.pool"
LABEL_WORKER_ID = "sluice.worker_id"
LABEL_INDEX = "sluice.index"
LABEL_GPU = "sluice.gpu"

ALIVE = ("created", "restarting", "running")


@dataclass
class DockerConfig:
    image: str = "sluice:latest"
    redis_url: str | None = None  # passed to workers as SLUICE_REDIS_URL
    # argv before the pool flags; None: the image's ``sluice`` entry point.
    command_prefix: Sequence[str] = ("sluice", "worker")
    pool_flags: bool = True  # append --pool/--lanes/--worker-id (off for a custom command_prefix)
    extra_args: Sequence[str] = ()
    environment: dict[str, str] = field(default_factory=dict)
    network: str | None = None
    name_prefix: str = "sluice-worker"
    host: str | None = None  # host part of worker ids (default: this machine's hostname)
    # GPUs: one DeviceRequest per container. gpu_count=None or 0: no GPU. With gpu_device_ids each
    # container gets one free id from that list (count=1 alone would give every container the same GPU).
    gpu_count: int | None = 1
    gpu_capabilities: Sequence[Sequence[str]] = (("gpu",),)
    gpu_driver: str = ""
    gpu_device_ids: Sequence[str] | None = None
    drain_timeout_s: float = 300.0
    init: bool = True  # tini as PID 1 forwards SIGTERM and reaps the engine's children
    shm_size: str | None = "8g"
    volumes: dict[str, dict[str, str]] | None = None
    extra_run_kwargs: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    remove_exited: bool = True  # reap = remove exited managed containers (exit codes are logged first)
    stop_on_close: bool = False  # containers outlive the scaler by default
    max_instances: int | None = 64
    max_starting: int | None = 4


# --- pure functions ----------------------------------------------------------------------------------
def container_name(pool: str, index: int, config: DockerConfig) -> str:
    return f"{config.name_prefix}-{pool}-{index}"


def container_worker_id(pool: str, index: int, config: DockerConfig) -> str:
    return f"sluice-{pool}-{index}@{config.host or socket.gethostname()}"


def device_requests(config: DockerConfig, device_id: str | None = None) -> list[dict] | None:
    """Keyword dicts for ``docker.types.DeviceRequest`` (docker-py accepts them as plain dicts)."""
    if device_id is not None:
        return [{"driver": config.gpu_driver, "device_ids": [device_id],
                 "capabilities": [list(c) for c in config.gpu_capabilities]}]
    if not config.gpu_count:
        return None
    return [{"driver": config.gpu_driver, "count": config.gpu_count,
             "capabilities": [list(c) for c in config.gpu_capabilities]}]


def container_spec(pool: str, index: int, config: DockerConfig, device_id: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``client.containers.run`` that start one worker of ``pool``."""
    check_pool(pool)
    worker_id = container_worker_id(pool, index, config)
    command = list(config.command_prefix)
    if config.pool_flags:
        command += ["--pool", pool, "--lanes", ",".join(pool_lanes(pool)), "--worker-id", worker_id]
    command += list(config.extra_args)
    environment = {**config.environment, "SLUICE_WORKER_POOL": pool, "SLUICE_WORKER_ID": worker_id}
    if config.redis_url:
        environment["SLUICE_REDIS_URL"] = config.redis_url
    labels = {**config.labels, LABEL_MANAGED: "true", LABEL_POOL: pool, LABEL_WORKER_ID: worker_id,
              LABEL_INDEX: str(index)}
    if device_id is not None:
        labels[LABEL_GPU] = device_id
    spec: dict[str, Any] = {
        "image": config.image, "command": command, "name": container_name(pool, index, config),
        "hostname": container_name(pool, index, config), "labels": labels, "environment": environment,
        "detach": True, "stop_signal": "SIGTERM", "init": config.init,
    }
    requests = device_requests(config, device_id)
    if requests:
        spec["device_requests"] = requests
    if config.network:
        spec["network"] = config.network
    if config.shm_size:
        spec["shm_size"] = config.shm_size
    if config.volumes:
        spec["volumes"] = config.volumes
    spec.update(config.extra_run_kwargs)
    return spec


def list_filters(pool: str | None = None, config: DockerConfig | None = None) -> dict[str, Any]:
    """``filters`` for ``client.containers.list`` selecting managed containers (of one pool). The
    config's extra ``labels`` are part of the selector, so two fleets on one engine stay apart."""
    labels = [f"{key}={value}" for key, value in sorted((config.labels if config else {}).items())]
    labels.append(f"{LABEL_MANAGED}=true")
    if pool is not None:
        labels.append(f"{LABEL_POOL}={pool}")
    return {"label": labels}


def free_index(used: set[int]) -> int:
    index = 0
    while index in used:
        index += 1
    return index


def free_device(config: DockerConfig, used: set[str]) -> str | None:
    """The first configured GPU id no managed container holds (None: no ids configured)."""
    if not config.gpu_device_ids:
        return None
    for device_id in config.gpu_device_ids:
        if device_id not in used:
            return device_id
    raise RuntimeError("no free GPU: every id in gpu_device_ids is held by a managed container")


def docker_client(base_url: str | None = None, timeout: float = 60):
    """A Docker client: ``base_url`` or the environment (DOCKER_HOST, else /var/run/docker.sock)."""
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise ImportError("the docker actuator needs the 'docker' extra: pip install 'sluice[docker]'") from exc
    if base_url:
        return docker.DockerClient(base_url=base_url, timeout=timeout)
    return docker.from_env(timeout=timeout)


# --- the actuator --------------------------------------------------------------------------------------
class DockerActuator:
    def __init__(self, config: DockerConfig | None = None, *, client=None, redis=None, base_url: str | None = None,
                 **config_options):
        """``client``: a ``docker.DockerClient`` (default: from DOCKER_HOST / the local socket).
        ``redis``: client for heartbeats; without it running containers count as ready, load unknown."""
        if config is None:
            config = DockerConfig(**config_options)
        elif config_options:
            raise TypeError("pass either config or config options")
        self.config = config
        self.client = client if client is not None else docker_client(base_url)
        if redis is None and config.redis_url:
            from core.redis_clients import sync_client

            redis = sync_client(config.redis_url)
        self.redis = redis
        self._stops: dict[str, Future] = {}  # container id -> background stop (draining)
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="sluice-docker-stop")
        self._lock = threading.RLock()
        self.exit_codes: dict[str, int] = {}  # container name -> exit code, as reaped

    def _containers(self, pool: str | None = None) -> list:
        return self.client.containers.list(all=True, filters=list_filters(pool, self.config))

    def _reap(self, containers: list) -> list:
        alive = []
        for container in containers:
            if container.status in ALIVE:
                alive.append(container)
                continue
            code = container.attrs.get("State", {}).get("ExitCode")
            self.exit_codes[container.name] = code
            draining = container.id in self._stops
            (log.info if draining else log.warning)("container %s exited (code %s)", container.name, code)
            if draining and self._stops[container.id].done():
                self._stops.pop(container.id)
            if self.config.remove_exited:
                try:
                    container.remove()
                except Exception as exc:  # noqa: BLE001 - already removed, engine busy: next reap retries
                    log.debug("could not remove %s: %s", container.name, exc)
        return alive

    def instances(self, pool: str) -> list[InstanceInfo]:
        check_pool(pool)
        with self._lock:
            containers = self._reap(self._containers(pool))
        ids = {c.id: c.labels.get(LABEL_WORKER_ID) for c in containers}
        beats = read_heartbeats(self.redis, [w for w in ids.values() if w]) if self.redis is not None else {}
        result = []
        for container in containers:
            worker_id = ids[container.id]
            beat = beats.get(worker_id)
            if container.id in self._stops:
                state = "draining"
            elif container.status == "running" and (beat or self.redis is None):
                state = "ready"
            else:
                state = "starting"
            result.append(InstanceInfo.of(container.name, pool, state, beat, worker_id=worker_id))
        return result

    def current(self, pool: str) -> PoolObservation:
        return count_instances(pool, self.instances(pool))

    def scale(self, pool: str, target: int) -> ActuationResult:
        check_pool(pool)
        requested, target = target, clamp_target(target, self.config.max_instances)
        with self._lock:
            instances = self.instances(pool)
            before = count_instances(pool, instances)
            plan = plan_scale(instances, target, self.config.max_starting)
            started, drained, errors = [], [], []
            if plan.start:
                every = self._containers()  # indexes and GPUs are unique across pools
                used_index = {int(c.labels.get(LABEL_INDEX, -1)) for c in every if c.labels.get(LABEL_POOL) == pool}
                used_gpus = {c.labels[LABEL_GPU] for c in every if LABEL_GPU in c.labels}
                for _ in range(plan.start):
                    index = free_index(used_index)
                    try:
                        device = free_device(self.config, used_gpus)
                        spec = container_spec(pool, index, self.config, device)
                        self._remove_stale(spec["name"])
                        self.client.containers.run(**spec)
                    except Exception as exc:  # noqa: BLE001 - report, the next scale call retries
                        errors.append(f"start {pool}-{index}: {exc}")
                        break
                    used_index.add(index)
                    if device is not None:
                        used_gpus.add(device)
                    started.append(spec["name"])
            by_name = {c.name: c for c in self._containers(pool)} if plan.drain else {}
            for info in plan.drain:
                container = by_name.get(info.instance_id)
                if container is not None:
                    self._stop(container)
                    drained.append(info.instance_id)
        result = ActuationResult(pool=pool, requested=requested, target=target, before=before,
                                 started=tuple(started), drained=tuple(drained),
                                 pending=plan.pending + (plan.start - len(started)), errors=tuple(errors))
        if result.changed or result.errors:
            log.info("docker actuator %s", result.describe())
        return result

    def _remove_stale(self, name: str) -> None:
        """An exited container with the same name blocks ``run``; remove it (it was reaped already)."""
        try:
            import docker.errors

            stale = self.client.containers.get(name)
        except docker.errors.NotFound:
            return
        if stale.status not in ALIVE:
            stale.remove()

    def _stop(self, container) -> None:
        if container.id in self._stops:
            return
        timeout = int(self.config.drain_timeout_s)
        log.info("draining container %s (stop timeout %d s)", container.name, timeout)
        self._stops[container.id] = self._executor.submit(container.stop, timeout=timeout)

    def wait_drained(self, timeout_s: float | None = None) -> None:
        """Block until every stop issued so far has returned (tests, shutdown)."""
        for future in list(self._stops.values()):
            future.result(timeout_s)

    def close(self) -> None:
        if self.config.stop_on_close:
            with self._lock:
                for container in self._containers():
                    if container.status in ALIVE:
                        self._stop(container)
            self.wait_drained()
        self._executor.shutdown(wait=True)
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass
