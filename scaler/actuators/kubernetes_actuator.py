"""Kubernetes actuator: one Deployment per pool; scaling patches its ``spec.replicas``.

* ``current``: ``ready`` = the Deployment's ready replicas, ``starting`` = desired replicas not ready yet,
  ``draining`` = the pool's pods that are terminating (``metadata.deletionTimestamp`` set).
* scale-out/in: ``AppsV1Api.patch_namespaced_deployment_scale(name, ns, {"spec": {"replicas": n}})``.
* draining: Kubernetes sends SIGTERM to a removed pod (Celery warm shutdown: stop consuming, finish
  in-flight requests, exit) and SIGKILLs it only after the pod's ``terminationGracePeriodSeconds``; set
  that above the longest request (see :func:`deployment_manifest`). To prefer the least-loaded pods,
  before a scale-in the actuator writes ``controller.kubernetes.io/pod-deletion-cost`` = in-flight
  requests (from the heartbeats) on the pool's pods; the ReplicaSet controller removes the lowest cost
  first (best effort, as documented by Kubernetes).

Pods are matched to heartbeats by the worker id's host part: a worker id ends with ``@<hostname>``
and a pod's hostname is its name (the default ``sluice-<pid>@<host>`` ids, and the manifest's
``--worker-id sluice-<pool>-$(POD_NAME)@$(POD_NAME)``, both satisfy this).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from broker.heartbeat import WorkerHeartbeat, read_heartbeats
from scaler.state import PoolObservation

from .base import ActuationResult, InstanceInfo, check_pool, clamp_target, pool_lanes

log = logging.getLogger(__name__)

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


@dataclass
class KubernetesConfig:
    namespace: str = "default"
    deployment_names: dict[str, str] = field(default_factory=dict)  # pool -> name; default sluice-worker-<pool>
    name_prefix: str = "sluice-worker"
    kubeconfig: str | None = None  # None: in-cluster config if available, else KUBECONFIG / ~/.kube/config
    context: str | None = None
    set_deletion_cost: bool = True
    max_instances: int | None = 64
    # Only for deployment_manifest():
    image: str = "sluice:latest"
    redis_url: str | None = None
    command_prefix: Sequence[str] = ("sluice", "worker")
    extra_args: Sequence[str] = ()
    gpus_per_pod: int = 1
    termination_grace_period_s: int = 600


# --- pure functions ---------------------------------------------------------------------------------
def deployment_name(pool: str, config: KubernetesConfig) -> str:
    return config.deployment_names.get(check_pool(pool)) or f"{config.name_prefix}-{pool}"


def scale_patch(target: int) -> dict[str, Any]:
    """Body for ``patch_namespaced_deployment_scale``."""
    return {"spec": {"replicas": int(target)}}


def deletion_cost_patch(inflight: int | None) -> dict[str, Any]:
    """Body for ``patch_namespaced_pod``: lower cost = removed first on scale-in."""
    return {"metadata": {"annotations": {DELETION_COST: str(int(inflight or 0))}}}


def label_selector(match_labels: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(match_labels.items()))


def pool_count(pool: str, desired: int | None, ready: int | None, terminating: int) -> PoolObservation:
    """Counts from a Deployment's spec/status and its terminating pods."""
    desired, ready = desired or 0, ready or 0
    ready = min(ready, desired)
    return PoolObservation(pool=pool, ready=ready, starting=desired - ready, draining=terminating)


def pod_state(pod: dict) -> str:
    """``draining`` (deletion requested), ``ready`` (Ready condition true) or ``starting``."""
    metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
    if metadata.get("deletion_timestamp"):
        return "draining"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready" and condition.get("status") == "True":
            return "ready"
    return "starting"


def host_of_worker(worker_id: str) -> str:
    return worker_id.rsplit("@", 1)[-1]


def deployment_manifest(pool: str, config: KubernetesConfig, replicas: int = 0) -> dict[str, Any]:
    """A Deployment for one pool's workers (for ``kubectl apply`` or the live test)."""
    name = deployment_name(pool, config)
    labels = {"app.kubernetes.io/name": "sluice-worker", "sluice.pool": pool, "sluice.managed": "true"}
    env = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    if config.redis_url:
        env.append({"name": "SLUICE_REDIS_URL", "value": config.redis_url})
    container: dict[str, Any] = {
        "name": "worker", "image": config.image,
        "command": [*config.command_prefix, "--pool", pool, "--lanes", ",".join(pool_lanes(pool)),
                    "--worker-id", f"sluice-{pool}-$(POD_NAME)@$(POD_NAME)", *config.extra_args],
        "env": env,
    }
    if config.gpus_per_pod:
        container["resources"] = {"limits": {"nvidia.com/gpu": config.gpus_per_pod}}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "sluice-worker", "sluice.pool": pool}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"terminationGracePeriodSeconds": config.termination_grace_period_s,
                         "containers": [container]},
            },
        },
    }


def kubeconfig_available() -> bool:
    path = os.environ.get("KUBECONFIG")
    if path:
        return any(Path(p).is_file() for p in path.split(os.pathsep) if p)
    return (Path.home() / ".kube" / "config").is_file()


def load_api_client(config: KubernetesConfig):
    try:
        from kubernetes import client as k8s_client
        from kubernetes import config as k8s_config
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise ImportError("the kubernetes actuator needs the 'kubernetes' extra: pip install 'sluice[kubernetes]'") from exc
    if config.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        k8s_config.load_incluster_config()
        return k8s_client.ApiClient()
    return k8s_config.new_client_from_config(config_file=config.kubeconfig, context=config.context)


def _ready(deployment) -> int:
    return (deployment.status.ready_replicas or 0) if deployment.status is not None else 0


# --- the actuator ------------------------------------------------------------------------------------
class KubernetesActuator:
    def __init__(self, config: KubernetesConfig | None = None, *, api_client=None, redis=None, **config_options):
        if config is None:
            config = KubernetesConfig(**config_options)
        elif config_options:
            raise TypeError("pass either config or config options")
        self.config = config
        from kubernetes import client as k8s_client

        self.api_client = api_client if api_client is not None else load_api_client(config)
        self.apps = k8s_client.AppsV1Api(self.api_client)
        self.core = k8s_client.CoreV1Api(self.api_client)
        if redis is None and config.redis_url:
            from core.redis_clients import sync_client

            redis = sync_client(config.redis_url)
        self.redis = redis

    def _deployment(self, pool: str):
        return self.apps.read_namespaced_deployment(deployment_name(pool, self.config), self.config.namespace)

    def _pods(self, deployment) -> list[dict]:
        selector = label_selector(deployment.spec.selector.match_labels or {})
        pods = self.core.list_namespaced_pod(self.config.namespace, label_selector=selector).items
        return [self.api_client.sanitize_for_serialization(p) for p in pods]

    def _heartbeats_by_host(self) -> dict[str, WorkerHeartbeat]:
        if self.redis is None:
            return {}
        return {host_of_worker(worker_id): beat for worker_id, beat in read_heartbeats(self.redis).items()}

    def instances(self, pool: str) -> list[InstanceInfo]:
        check_pool(pool)
        pods = self._pods(self._deployment(pool))
        beats = self._heartbeats_by_host()
        result = []
        for pod in pods:
            # sanitize_for_serialization gives camelCase; normalise the two fields pod_state reads.
            metadata = pod.get("metadata") or {}
            view = {"metadata": {"deletion_timestamp": metadata.get("deletionTimestamp")}, "status": pod.get("status")}
            name = metadata.get("name")
            result.append(InstanceInfo.of(name, pool, pod_state(view), beats.get(name)))
        return result

    def current(self, pool: str) -> PoolObservation:
        check_pool(pool)
        deployment = self._deployment(pool)
        terminating = sum(1 for p in self._pods(deployment) if (p.get("metadata") or {}).get("deletionTimestamp"))
        return pool_count(pool, deployment.spec.replicas, _ready(deployment), terminating)

    def scale(self, pool: str, target: int) -> ActuationResult:
        check_pool(pool)
        requested, target = target, clamp_target(target, self.config.max_instances)
        deployment = self._deployment(pool)
        name = deployment.metadata.name
        pods = self._pods(deployment)
        terminating = sum(1 for p in pods if (p.get("metadata") or {}).get("deletionTimestamp"))
        before = pool_count(pool, deployment.spec.replicas, _ready(deployment), terminating)
        desired = deployment.spec.replicas or 0
        errors = []
        if target == desired:
            return ActuationResult(pool=pool, requested=requested, target=target, before=before)
        if target < desired and self.config.set_deletion_cost:
            try:
                self._set_deletion_costs(pool)
            except Exception as exc:  # noqa: BLE001 - best effort; scaling goes on without it
                errors.append(f"pod-deletion-cost: {exc}")
        self.apps.patch_namespaced_deployment_scale(name, self.config.namespace, scale_patch(target))
        log.info("kubernetes actuator: deployment %s replicas %d -> %d", name, desired, target)
        return ActuationResult(pool=pool, requested=requested, target=target, before=before,
                               # Kubernetes picks the pods: these name replica slots, not pods.
                               started=tuple(f"{name}#{i}" for i in range(desired, target)),
                               drained=tuple(f"{name}#{i}" for i in range(target, desired)),
                               errors=tuple(errors))

    def _set_deletion_costs(self, pool: str) -> None:
        for info in self.instances(pool):
            if info.state == "draining":
                continue
            # Pods still starting have no heartbeat (cost 0): they go first, as with the other actuators.
            self.core.patch_namespaced_pod(info.instance_id, self.config.namespace, deletion_cost_patch(info.inflight))

    def close(self) -> None:
        try:
            self.api_client.close()
        except Exception:  # noqa: BLE001
            pass
