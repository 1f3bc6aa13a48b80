"""Actuators: carry scaling decisions out on real instances (the only I/O part of ``scaler``).

``make_actuator(kind, **options)`` builds one of:

* ``local``      -- ``sluice worker`` subprocesses on this machine (:class:`LocalActuator`, the default);
* ``docker``     -- one container per instance via the Docker Engine API (:class:`DockerActuator`);
* ``kubernetes`` -- one Deployment per pool, scaled through its ``scale`` subresource
  (:class:`KubernetesActuator`).

The docker/kubernetes SDKs are imported only when those kinds are built.
"""

from __future__ import annotations

from typing import Any

from .base import ActuationResult, Actuator, InstanceInfo, choose_to_drain, clamp_target, drain_order, plan_scale

KINDS = ("local", "docker", "kubernetes")


def make_actuator(kind: str = "local", **options: Any) -> Actuator:
    """Build an actuator. Options are the chosen class's keyword arguments: for ``docker`` and
    ``kubernetes`` either ``config=`` or the fields of :class:`DockerConfig` / :class:`KubernetesConfig`
    (plus ``client=`` / ``api_client=`` and ``redis=``)."""
    kind = kind.lower()
    if kind == "local":
        from .local import LocalActuator

        return LocalActuator(**options)
    if kind == "docker":
        from .docker_actuator import DockerActuator

        return DockerActuator(**options)
    if kind in ("kubernetes", "k8s"):
        from .kubernetes_actuator import KubernetesActuator

        return KubernetesActuator(**options)
    raise ValueError(f"unknown actuator kind {kind!r}; expected one of {KINDS}")


HOST_ONLY_SETTINGS = ("SLUICE_MODEL", "SLUICE_DATA_DIR", "SLUICE_REDIS_URL", "SLUICE_SCALER_ACTUATOR",
                      "SLUICE_SCALER_POLICY")


def docker_options(settings) -> dict[str, Any]:
    """The docker actuator's options from Settings (``docker_*``): image, network, the workers' Redis URL and
    environment, GPUs.  Pure: the unit tests check the mapping without an engine."""
    from core.settings import settings_env

    redis_url = settings.docker_redis_url or settings.redis_url
    # This process's settings, less what is a path or address on this host (the image has its own model
    # and data directory) and what only the scaler reads.
    environment = {name: value for name, value in settings_env(settings).items()
                   if name not in HOST_ONLY_SETTINGS and not name.startswith("SLUICE_DOCKER_")}
    if redis_url:
        environment["SLUICE_REDIS_URL"] = redis_url
    return {"image": settings.docker_image, "network": settings.docker_network, "redis_url": redis_url,
            "environment": environment, "gpu_count": settings.docker_gpus_per_worker or None,
            "gpu_device_ids": settings.docker_gpu_device_ids}


__all__ = [
    "KINDS", "ActuationResult", "Actuator", "InstanceInfo", "choose_to_drain", "clamp_target", "drain_order",
    "docker_options", "make_actuator", "plan_scale",
]
