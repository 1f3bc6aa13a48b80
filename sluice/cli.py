"""The `sluice` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import click

from sluice.config import get_settings

log = logging.getLogger("sluice")


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def override_settings(**values) -> None:
    """Flags win over SLUICE_* variables; written to the environment so child processes see them too."""
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple, dict)):
            value = json.dumps(list(value) if isinstance(value, tuple) else value)
        os.environ[f"SLUICE_{name.upper()}"] = str(value)
    get_settings.cache_clear()


def ensure_model() -> Path:
    """The model directory to serve; builds the default model on first use."""
    from sluice.model_init import build_default_model, is_model_dir

    settings = get_settings()
    if settings.model is not None:
        if not is_model_dir(settings.model):
            raise click.ClickException(f"{settings.model} is not a Hugging Face model directory (no config.json/tokenizer)")
        return settings.model
    if not is_model_dir(settings.model_dir):
        click.echo(f"building the default model in {settings.model_dir} (first run)", err=True)
        build_default_model(settings.model_dir)
    return settings.model_dir


@click.group()
@click.option("--log-level", default="INFO", show_default=True)
def main(log_level: str) -> None:
    """Sluice: an SLO-aware request queue and autoscaler for LLM serving."""
    configure_logging(log_level)


# --- model -----------------------------------------------------------------------
@main.group()
def model() -> None:
    """The served model."""


@model.command("init")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Directory (default: <data_dir>/models/sluice-tiny-llama).")
@click.option("--force", is_flag=True, help="Rebuild even if present.")
def model_init(out: Path | None, force: bool) -> None:
    """Write the default random-weight tiny Llama with the Mistral-7B v0.1 tokenizer."""
    from sluice.model_init import build_default_model

    path = build_default_model(out or get_settings().model_dir, force=force)
    click.echo(str(path))


# --- processes ---------------------------------------------------------------------
@main.command()
@click.option("--host", default=None, help="Bind address (SLUICE_API_HOST).")
@click.option("--port", type=int, default=None, help="API port (SLUICE_API_PORT, default 8000).")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None, help="Local HF model directory.")
def api(host, port, model_path) -> None:
    """The OpenAI-compatible HTTP API."""
    import uvicorn

    override_settings(api_host=host, api_port=port, model=model_path)
    ensure_model()
    settings = get_settings()
    settings.require_redis_url()
    from api.app import create_api

    # Keep idle client connections longer than uvicorn's 5 s default: a client that reuses a connection
    # the server is closing gets a reset on a POST it cannot safely retry.
    uvicorn.run(create_api(settings), host=settings.api_host, port=settings.api_port, log_level="info",
                timeout_keep_alive=75)


@main.command()
@click.option("--lanes", default=None, help="Comma-separated lanes to consume, in priority order.")
@click.option("--pool", type=click.Choice(["interactive", "batch", "mixed"]), default=None)
@click.option("--batch-size", type=int, default=None, help="Initial admission limit.")
@click.option("--max-batch-size", type=int, default=None)
@click.option("--batching-mode", type=click.Choice(["continuous", "dynamic", "none"]), default=None)
@click.option("--worker-id", default=None)
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None, help="Local HF model directory.")
def worker(lanes, pool, batch_size, max_batch_size, batching_mode, worker_id, model_path) -> None:
    """A Celery worker owning one vLLM engine."""
    override_settings(
        worker_lanes=lanes.split(",") if lanes else None, worker_pool=pool, batch_size=batch_size,
        max_batch_size=max_batch_size, batching_mode=batching_mode, worker_id=worker_id, model=model_path,
    )
    ensure_model()
    from workers.main import run_worker

    run_worker(get_settings())


@main.command()
@click.option("--port", type=int, default=None, help="Flower port (SLUICE_FLOWER_PORT, default 5555).")
@click.option("--address", default=None, help="Bind address (SLUICE_FLOWER_ADDRESS, default 127.0.0.1).")
def flower(port, address) -> None:
    """Flower, watching the same broker."""
    override_settings(flower_port=port, flower_address=address)
    settings = get_settings()
    settings.require_redis_url()
    args = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "flower",
            f"--port={settings.flower_port}", f"--address={settings.flower_address}"]
    # On loopback (the default) Flower's JSON API, used by ops scripts and the tests, needs no login;
    # bound anywhere else it keeps Flower's default (authentication required for the API).
    if settings.flower_address in ("127.0.0.1", "localhost", "::1"):
        os.environ.setdefault("FLOWER_UNAUTHENTICATED_API", "true")
    os.execv(sys.executable, args)


@main.command()
@click.option("--port", type=int, default=None, help="API port (default 8000).")
@click.option("--flower-port", type=int, default=None, help="Flower port (default 5555).")
@click.option("--workers", "worker_count", type=int, default=1, show_default=True, help="vLLM workers to start.")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None, help="Local HF model directory.")
@click.option("--no-flower", is_flag=True, help="Do not start Flower.")
@click.option("--scaler", "scaler_policy", type=click.Choice(["chiron", "static", "static_peak", "utilization", "queue"]),
              default=None, help="Run the autoscaler with this policy; it starts and stops the workers (local actuator).")
def run(port, flower_port, worker_count, model_path, no_flower, scaler_policy) -> None:
    """Start Sluice in the foreground: Redis (or embedded Valkey), API, worker(s), Flower. Ctrl-C stops all."""
    from sluice.runner import ProcessGroup, sluice_command

    override_settings(api_port=port, flower_port=flower_port, model=model_path)
    ensure_model()
    settings = get_settings()
    valkey = None
    if not settings.redis_url:
        from sluice.embedded_redis import start_embedded_valkey

        valkey = start_embedded_valkey(settings.data_dir / "valkey")
        override_settings(redis_url=valkey.connection_url + "/0")
        settings = get_settings()
    log.info("Redis at %s", settings.redis_url)
    group = ProcessGroup(env=dict(os.environ))
    status = 1
    try:
        group.start("api", sluice_command("api"))
        if scaler_policy:
            group.start("scaler", sluice_command("scaler", "run", "--policy", scaler_policy, "--actuator", "local"))
        else:
            for index in range(worker_count):
                group.start(f"worker-{index}", sluice_command("worker"))
        if not no_flower:
            group.start("flower", sluice_command("flower"))
        log.info("Sluice: API http://%s:%d  Flower http://127.0.0.1:%d  (Ctrl-C stops everything)",
                 settings.api_host, settings.api_port, settings.flower_port)
        status = group.wait()
    finally:
        group.stop()
        if valkey is not None:
            valkey.stop()
    sys.exit(status)


# --- scaler ------------------------------------------------------------------------
@main.group()
def scaler() -> None:
    """The Chiron-style autoscaler."""


@scaler.command("run")
@click.option("--policy", type=click.Choice(["chiron", "static", "static_peak", "utilization", "queue"]), default=None)
@click.option("--actuator", type=click.Choice(["local", "docker", "kubernetes"]), default=None)
def scaler_run(policy, actuator) -> None:
    """Observe queues and workers; set batch sizes and instance counts."""
    import signal
    import threading

    from scaler.actuators import make_actuator
    from scaler.service import ScalerService
    from sluice.redis_clients import sync_client
    from workers.celery_app import create_app

    override_settings(scaler_policy=policy, scaler_actuator=actuator)
    settings = get_settings()
    client = sync_client(settings.require_redis_url())
    options = {"redis": client}
    if settings.scaler_actuator == "local":
        ensure_model()
        options["log_dir"] = settings.data_dir / "logs" / "workers"
    act = make_actuator(settings.scaler_actuator, **options)
    service = ScalerService(client, create_app(settings), act, settings.scaler_policy, settings.scaler,
                            settings.scaler.slo.itl_s)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        service.run(stop)
    finally:
        log.info("scaler stopping: draining the workers it started")
        act.close()


@scaler.command("status")
@click.option("--limit", type=int, default=20, show_default=True, help="Decisions to show.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def scaler_status(limit, as_json) -> None:
    """Workers, action counters and the latest decisions with their reasons."""
    from scaler.service import describe_status
    from sluice.redis_clients import sync_client

    status = describe_status(sync_client(get_settings().require_redis_url()), limit)
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    click.echo(f"{len(status['workers'])} workers:")
    for worker_id, fields in status["workers"].items():
        click.echo(f"  {worker_id}: " + ", ".join(f"{k}={v}" for k, v in fields.items()))
    click.echo("actions: " + (", ".join(f"{k}={v}" for k, v in sorted(status["actions"].items())) or "none"))
    for entry in status["decisions"]:
        when = time.strftime("%H:%M:%S", time.localtime(entry["at"]))
        target = entry.get("worker") or entry.get("pool")
        click.echo(f"  {when} {entry['kind']} {target}: {entry.get('from')} -> {entry.get('to')}: {entry['reason']}")


# --- bench -------------------------------------------------------------------------
@main.group()
def bench() -> None:
    """Benchmarks (results are ratios measured side by side in one run)."""


def _mount_subcommands() -> None:
    from bench.broker_bench import broker_command
    from bench.cluster import cluster_command
    from bench.scale import scale_command
    from bench.ssjf import ssjf_command
    from predictor.cli import predictor_group

    for name, command in (("broker", broker_command), ("ssjf", ssjf_command), ("cluster", cluster_command),
                          ("scale", scale_command)):
        bench.add_command(command, name)
    main.add_command(predictor_group, "predictor")


_mount_subcommands()

if __name__ == "__main__":
    main()
