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


__all__ = [
    "KINDS", "ActuationResult", "Actuator", "InstanceInfo", "choose_to_drain", "clamp_target", "drain_order",
    "make_actuator", "plan_scale",
]
