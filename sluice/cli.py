"""The `sluice` command line.

Each command builds its Settings once, from SLUICE_* variables and the flags it was given
(``Settings(**flags)``), and passes them down. A command's modules are imported only when it runs:
the benchmarks and the predictor commands are mounted by name (``LazyGroup``).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import click
from pydantic import ValidationError

from core.settings import Settings

log = logging.getLogger("sluice")

SCALER_POLICIES = ["chiron", "static", "static_peak", "utilization", "queue"]


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def build_settings(**flags) -> Settings:
    """Settings from SLUICE_* variables, with the flags that were given (not None) on top."""
    try:
        return Settings(**{name: value for name, value in flags.items() if value is not None})
    except ValidationError as exc:
        raise click.ClickException(f"invalid settings: {exc}") from None


def ensure_model(settings: Settings) -> Path:
    """The model directory to serve; builds the default model on first use."""
    from sluice.model_init import build_default_model, is_model_dir

    if settings.model is not None:
        if not is_model_dir(settings.model):
            raise click.ClickException(f"{settings.model} is not a Hugging Face model directory (no config.json/tokenizer)")
        return settings.model
    if not is_model_dir(settings.model_dir):
        click.echo(f"building the default model in {settings.model_dir} (first run)", err=True)
        build_default_model(settings.model_dir)
    return settings.model_dir


class LazyGroup(click.Group):
    """A click group whose subcommands are imported when invoked (click's documented pattern):
    ``lazy_subcommands`` maps a name to "module.attribute" of a click command."""

    def __init__(self, *args, lazy_subcommands: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = lazy_subcommands or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy_subcommands])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_subcommands:
            module_name, attribute = self.lazy_subcommands[cmd_name].rsplit(".", 1)
            command = getattr(importlib.import_module(module_name), attribute)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy_subcommands[cmd_name]} is not a click command")
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, lazy_subcommands={"predictor": "predictor.cli.predictor_group"})
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

    path = build_default_model(out or build_settings().model_dir, force=force)
    click.echo(str(path))


# --- processes ---------------------------------------------------------------------
def auth_options(function):
    """--auth, --no-auth and --insecure (SLUICE_AUTH, SLUICE_AUTH_INSECURE; docs/security.md)."""
    for option in (
        click.option("--insecure", "auth_insecure", is_flag=True, default=False,
                     help="With --no-auth on an address beyond loopback: yes, really (anyone may use the API)."),
        click.option("--no-auth", "no_auth", is_flag=True, default=False, help="Same as --auth off."),
        click.option("--auth", type=click.Choice(["auto", "required", "off"]), default=None,
                     help="API keys: auto (on unless listening on loopback only; the default), required, off."),
    ):
        function = option(function)
    return function


def auth_flags(auth: str | None, no_auth: bool, auth_insecure: bool | None) -> dict:
    if no_auth and auth not in (None, "off"):
        raise click.UsageError(f"--no-auth and --auth {auth} disagree")
    # An unset flag leaves SLUICE_AUTH_INSECURE as it is.
    return {"auth": "off" if no_auth else auth, "auth_insecure": True if auth_insecure else None}


def check_auth(settings: Settings) -> str:
    """Refuse auth=off beyond loopback (unless --insecure); the banner line that says whether keys are needed."""
    refusal = settings.auth_refusal()
    if refusal:
        raise click.ClickException(refusal)
    if settings.auth_enabled:
        return (f"authentication ON: API keys required (Authorization: Bearer ...; make one with `sluice keys "
                f"create`), SLUICE_AUTH={settings.auth}")
    return f"authentication OFF (SLUICE_AUTH={settings.auth}, listening on {settings.api_host})"


@main.command()
@click.option("--host", default=None, help="Bind address (SLUICE_API_HOST).")
@click.option("--port", type=int, default=None, help="API port (SLUICE_API_PORT, default 8000).")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None, help="Local HF model directory.")
@auth_options
def api(host, port, model_path, auth, no_auth, auth_insecure) -> None:
    """The OpenAI-compatible HTTP API."""
    settings = build_settings(api_host=host, api_port=port, model=model_path,
                              **auth_flags(auth, no_auth, auth_insecure))
    click.echo(check_auth(settings), err=True)
    ensure_model(settings)
    settings.require_redis_url()
    from api.app import create_api
    from api.server import serve

    serve(create_api(settings), settings)


@main.command()
@click.option("--lanes", default=None, help="Comma-separated lanes to consume, in priority order.")
@click.option("--pool", type=click.Choice(["interactive", "batch", "mixed"]), default=None)
@click.option("--admission-limit", type=int, default=None, help="Initial admission limit: requests run at once.")
@click.option("--max-admission-limit", type=int, default=None, help="Upper bound of the admission limit.")
@click.option("--batching-mode", type=click.Choice(["continuous", "dynamic", "none"]), default=None)
@click.option("--worker-id", default=None)
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None, help="Local HF model directory.")
def worker(lanes, pool, admission_limit, max_admission_limit, batching_mode, worker_id, model_path) -> None:
    """A Celery worker owning one vLLM engine."""
    settings = build_settings(
        worker_lanes=lanes.split(",") if lanes else None, worker_pool=pool, admission_limit=admission_limit,
        max_admission_limit=max_admission_limit, batching_mode=batching_mode, worker_id=worker_id, model=model_path,
    )
    ensure_model(settings)
    from workers.main import run_worker

    run_worker(settings)


@main.command()
@click.option("--port", type=int, default=None, help="Flower port (SLUICE_FLOWER_PORT, default 5555).")
@click.option("--address", default=None, help="Bind address (SLUICE_FLOWER_ADDRESS, default 127.0.0.1).")
def flower(port, address) -> None:
    """Flower, watching the same broker."""
    from broker.celery_app import create_app

    settings = build_settings(flower_port=port, flower_address=address)
    settings.require_redis_url()
    # On loopback (the default) Flower's JSON API, used by ops scripts and the tests, needs no login;
    # bound anywhere else it keeps Flower's default (authentication required for the API). Flower reads
    # this variable of its own process on every API request.
    if settings.flower_address in ("127.0.0.1", "localhost", "::1"):
        os.environ.setdefault("FLOWER_UNAUTHENTICATED_API", "true")
    # Celery's own command line with this app (Flower is a celery subcommand); SIGINT/SIGTERM stop it quietly.
    status = create_app(settings).start(["flower", f"--port={settings.flower_port}",
                                         f"--address={settings.flower_address}"])
    sys.exit(status or 0)


@main.command()
@click.option("--host", default=None, help="API bind address (SLUICE_API_HOST, default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="API port (default 8000).")
@click.option("--flower-port", type=int, default=None, help="Flower port (default 5555).")
@click.option("--workers", "worker_count", type=int, default=1, show_default=True, help="vLLM workers to start.")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None, help="Local HF model directory.")
@click.option("--no-flower", is_flag=True, help="Do not start Flower.")
@click.option("--scaler", "scaler_policy", type=click.Choice(SCALER_POLICIES), default=None,
              help="Run the autoscaler with this policy; it starts and stops the workers (local actuator).")
@auth_options
def run(host, port, flower_port, worker_count, model_path, no_flower, scaler_policy, auth, no_auth,
        auth_insecure) -> None:
    """Start Sluice in the foreground: Redis (or embedded Valkey), API, worker(s), Flower. Ctrl-C stops all."""
    from sluice.runner import RunPlan, StopRequest, run_foreground

    settings = build_settings(api_host=host, api_port=port, flower_port=flower_port, model=model_path,
                              **auth_flags(auth, no_auth, auth_insecure))
    banner = check_auth(settings)  # refuses auth=off beyond loopback before anything starts
    # From here a Ctrl-C only asks to stop: the runner stops what it started, in order, and exits 0.
    stop = StopRequest()
    ensure_model(settings)
    status = 0 if stop else run_foreground(
        settings, RunPlan(worker_count=worker_count, scaler_policy=scaler_policy, flower=not no_flower), stop,
        banner=banner)
    sys.exit(status)


# --- scaler ------------------------------------------------------------------------
@main.group()
def scaler() -> None:
    """The Chiron-style autoscaler."""


@scaler.command("run")
@click.option("--policy", type=click.Choice(SCALER_POLICIES), default=None)
@click.option("--actuator", type=click.Choice(["local", "docker", "kubernetes"]), default=None)
def scaler_run(policy, actuator) -> None:
    """Observe queues and workers; set admission limits and instance counts."""
    import signal
    import threading

    from broker.celery_app import create_app
    from core.redis_clients import sync_client
    from scaler.actuators import make_actuator
    from scaler.service import ScalerService

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    settings = build_settings(scaler_policy=policy, scaler_actuator=actuator)
    client = sync_client(settings.require_redis_url(), ride_through_s=settings.redis_ride_through_s)
    options = {"redis": client}
    if settings.scaler_actuator == "local":
        from sluice.runner import child_env

        ensure_model(settings)
        # The workers it starts get this process's settings (and watch the same Redis).
        options.update(redis_url=settings.redis_url, env=child_env(settings),
                       log_dir=settings.data_dir / "logs" / "workers")
    elif settings.scaler_actuator == "docker":
        from scaler.actuators import docker_options

        options.update(docker_options(settings))
    act = make_actuator(settings.scaler_actuator, **options)
    service = ScalerService(client, create_app(settings), act, settings.scaler_policy, settings.scaler,
                            settings.scaler.slo.itl_s)
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
    from core.redis_clients import sync_client
    from scaler.service import describe_status

    status = describe_status(sync_client(build_settings().require_redis_url()), limit)
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
        for step, why in ((entry.get("inputs") or {}).get("steps") or {}).items():  # chiron: how it got there
            click.echo(f"      {step}: {why}")


# --- keys --------------------------------------------------------------------------
@main.group()
def keys() -> None:
    """API keys (docs/security.md), straight in Redis: how the first admin key is made."""


def key_store():
    from broker.api_keys import ApiKeyStore
    from core.redis_clients import async_client

    return ApiKeyStore(async_client(build_settings().require_redis_url()))


def run_store(operation):
    """Run ``operation(store)`` (a coroutine function) on a fresh store, closing its client."""
    import asyncio

    async def go():
        store = key_store()
        try:
            return await operation(store)
        finally:
            await store.client.aclose()

    return asyncio.run(go())


@keys.command("create")
@click.option("--tenant", required=True, help="Who the key's requests, files and batches belong to.")
@click.option("--lanes", default=None, help="Comma-separated lanes it may use (default: all).")
@click.option("--rpm", type=click.IntRange(min=1), default=None, help="Requests per minute (default: no limit).")
@click.option("--tpm", type=click.IntRange(min=1), default=None,
              help="Tokens per minute, a request costing prompt tokens + max_tokens (default: no limit).")
@click.option("--weight", type=float, default=1.0, show_default=True, help="The tenant's fair-share weight.")
@click.option("--admin", is_flag=True, help="May manage keys and read /metrics and the scaler's decisions.")
def keys_create(tenant, lanes, rpm, tpm, weight, admin) -> None:
    """Make a key and print it, once: only its SHA-256 is stored."""
    lane_list = [lane.strip() for lane in lanes.split(",") if lane.strip()] if lanes else None
    try:
        key, record = run_store(lambda store: store.create(tenant=tenant, now=time.time(), lanes=lane_list, rpm=rpm,
                                                           tpm=tpm, admin=admin, weight=weight))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"key id {record.key_id} for tenant {tenant}; the key (shown only now):", err=True)
    click.echo(key)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def keys_list(as_json) -> None:
    """Every key's id, tenant and grants (never the key)."""
    records = [record.describe() for record in run_store(lambda store: store.list())]
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    for item in records:
        limits = f"rpm {item['rpm'] or '-'} tpm {item['tpm'] or '-'} weight {item['weight']:g}"
        click.echo(f"{item['id']}  {item['tenant']:<20} lanes {','.join(item['lanes'] or ['all'])}  {limits}"
                   f"{'  admin' if item['admin'] else ''}  created {when(item['created_at'])}")


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id) -> None:
    """Revoke the key of KEY_ID (from `sluice keys list`): its next request gets 401."""
    from broker.api_keys import UnknownKeyId

    try:
        record = run_store(lambda store: store.revoke(key_id))
    except UnknownKeyId:
        raise click.ClickException(f"no key with id {key_id!r} (see `sluice keys list`)") from None
    click.echo(f"revoked {record.key_id} (tenant {record.tenant})")


# --- profile -----------------------------------------------------------------------
@main.command("profile")
@click.option("--url", default=None, help="The API (default: this host's, from SLUICE_API_HOST/SLUICE_API_PORT).")
@click.option("--concurrency", "concurrency_text", default="1,2,4,8,16,32", show_default=True,
              help="Load steps: requests kept in flight, comma-separated, lightest first.")
@click.option("--step-s", type=float, default=20.0, show_default=True, help="Seconds per load step.")
@click.option("--max-tokens", type=int, default=128, show_default=True, help="Output tokens per request.")
@click.option("--prompt-words", type=int, default=100, show_default=True, help="Prompt length in words.")
@click.option("--no-store", is_flag=True, help="Print the profile without storing it in Redis.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None)
def profile_command(url, concurrency_text, step_s, max_tokens, prompt_words, no_store, json_out) -> None:
    """Measure a worker's interactive capacity (tokens/s at the ITL SLO) and store it for the scaler."""
    import dataclasses
    import json

    from scaler.profiler import profile

    settings = build_settings()
    base_url = url or default_api_url()
    concurrencies = [int(part) for part in concurrency_text.split(",") if part.strip()]
    result = profile(settings, base_url, concurrencies=concurrencies, step_s=step_s, max_tokens=max_tokens,
                     prompt_words=prompt_words, store=not no_store, echo=click.echo)
    click.echo(f"capacity of {result.model}: {result.tokens_per_s:.1f} output tokens/s per worker at ITL p90 <= "
               f"{result.itl_slo_s * 1000:.0f} ms (concurrency {result.concurrency}, {result.workers} worker(s))"
               + ("" if no_store else "; stored for the scaler"))
    if json_out:
        with open(json_out, "w") as handle:
            json.dump(dataclasses.asdict(result), handle, indent=2)


# --- batch -------------------------------------------------------------------------
BIND_ALL = ("", "0.0.0.0", "::")


def default_api_url() -> str:
    """Where this machine's API listens: SLUICE_API_HOST (loopback when it binds every address) and port."""
    settings = build_settings()
    host = "127.0.0.1" if settings.api_host in BIND_ALL else settings.api_host
    return f"http://{host}:{settings.api_port}"


url_option = click.option("--url", default=None,
                          help="The Sluice API (default http://<SLUICE_API_HOST>:<SLUICE_API_PORT>).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print the batch object as JSON.")


class BatchCommand(click.Command):
    """A batch command: an API refusal, an unreachable API or a bad argument ends it with one line and exit 1."""

    def invoke(self, ctx: click.Context):
        import httpx

        from sluice.sdk import SluiceError

        try:
            return super().invoke(ctx)
        except SluiceError as exc:
            raise click.ClickException(str(exc)) from None
        except httpx.TransportError as exc:
            url = ctx.params.get("url") or default_api_url()
            raise click.ClickException(f"cannot reach the Sluice API at {url}: {exc}") from None
        except (OSError, TimeoutError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None


def batch_client(url: str | None):
    from sluice.sdk import SluiceClient

    return SluiceClient(url or default_api_url())


def batch_job(url: str | None, batch_id: str):
    """The batch of that id, without a request yet: the command's own request answers 404 if there is none."""
    from sluice.sdk import BatchJob

    return BatchJob(batch_client(url), batch_id)


def when(timestamp: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "-"


def describe_batch(batch: dict) -> list[str]:
    """The batch object for a person: status, progress, files, errors."""
    from sluice.sdk import describe_batch_error

    counts = batch.get("request_counts") or {}
    lines = [f"{batch['id']}  {batch['status']}",
             f"  endpoint     {batch['endpoint']}",
             f"  window       {batch['completion_window']} (created {when(batch.get('created_at'))}, "
             f"expires {when(batch.get('expires_at'))})",
             f"  requests     {counts.get('total', 0)} total, {counts.get('completed', 0)} completed, "
             f"{counts.get('failed', 0)} failed"]
    if batch.get("sluice"):
        lines.append("  by status    " + ", ".join(f"{name} {batch['sluice'].get(name, 0)}" for name in
                                                    ("queued", "running", "done", "failed", "cancelled", "expired")))
    lines += [f"  input file   {batch['input_file_id']}",
              f"  output file  {batch.get('output_file_id') or '-'}",
              f"  error file   {batch.get('error_file_id') or '-'}"]
    if batch.get("metadata"):
        lines.append("  metadata     " + ", ".join(f"{k}={v}" for k, v in batch["metadata"].items()))
    for error in (batch.get("errors") or {}).get("data") or []:
        lines.append(f"  error        {describe_batch_error(error)}")
    return lines


def echo_batch(batch: dict, as_json: bool) -> None:
    click.echo(json.dumps(batch, indent=2) if as_json else "\n".join(describe_batch(batch)))


def parse_metadata(pairs: tuple[str, ...]) -> dict[str, str] | None:
    if not pairs:
        return None
    if not all("=" in pair for pair in pairs):
        raise click.BadParameter("write KEY=VALUE", param_hint="--metadata")
    return dict(pair.split("=", 1) for pair in pairs)


@main.group()
def batch() -> None:
    """Batch jobs through the OpenAI Batch API: submit a JSONL file, follow it, fetch its results."""
    # A line per HTTP request would bury the answer (and an error's one line) under --log-level INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)


@batch.command("submit", cls=BatchCommand)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--window", default="24h", show_default=True,
              help="Completion window: the deadline (24h, 2h, 30m, 1h30m, 90s).")
@click.option("--endpoint", type=click.Choice(["/v1/chat/completions", "/v1/completions"]), default=None,
              help="The endpoint of every line (default: the first line's url).")
@click.option("--metadata", multiple=True, metavar="KEY=VALUE", help="Metadata to attach (repeatable).")
@click.option("--wait", "wait_", is_flag=True, help="Wait for the batch to end, with a progress bar on stderr.")
@click.option("--poll", "poll_s", type=float, default=2.0, show_default=True, help="Seconds between polls with --wait.")
@url_option
@json_option
def batch_submit(file, window, endpoint, metadata, wait_, poll_s, url, as_json) -> None:
    """Upload FILE (Batch input JSONL: custom_id, method, url, body per line) and create a batch from it."""
    client = batch_client(url)
    job = client.batches.submit(file, deadline=window, endpoint=endpoint, metadata=parse_metadata(metadata))
    if wait_:
        echo_batch(job.wait(poll_s=poll_s, progress=not as_json), as_json)
    else:
        echo_batch(job.status(), as_json)


def one_batch_command(name: str):
    """A command on one batch that prints the batch object: BATCH_ID, --url, --json."""
    def decorate(function):
        for option in (json_option, url_option, click.argument("batch_id"), batch.command(name, cls=BatchCommand)):
            function = option(function)
        return function
    return decorate


@one_batch_command("status")
def batch_status(batch_id, url, as_json) -> None:
    """A batch's status, request counts and files."""
    echo_batch(batch_job(url, batch_id).status(), as_json)


@batch.command("results", cls=BatchCommand)
@click.argument("batch_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the lines to this file (default: standard output).")
@click.option("--order", type=click.Choice(["file", "custom_id"]), default="file", show_default=True,
              help="file: as the server wrote them (output file, then error file); custom_id: sorted by custom_id.")
@url_option
def batch_results(batch_id, output, order, url) -> None:
    """An ended batch's output lines (then its error lines), one JSON object a line."""
    lines = batch_job(url, batch_id).results(order=order)
    out = output.open("w", encoding="utf-8") if output else sys.stdout
    written = 0
    try:
        for line in lines:
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
            written += 1
    finally:
        if output:
            out.close()
    if output:
        click.echo(f"{written} lines written to {output}", err=True)


@one_batch_command("cancel")
def batch_cancel(batch_id, url, as_json) -> None:
    """Cancel a batch: its queued requests leave the queue at once, running ones are aborted."""
    echo_batch(batch_job(url, batch_id).cancel(), as_json)


@batch.command("list", cls=BatchCommand)
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--after", default=None, help="The last batch id of the previous page.")
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print the list object as JSON.")
def batch_list(limit, after, url, as_json) -> None:
    """Batches, newest first."""
    page = batch_client(url).batches.list(limit=limit, after=after)
    if as_json:
        click.echo(json.dumps(page, indent=2))
        return
    for item in page["data"]:
        counts = item.get("request_counts") or {}
        ended = counts.get("completed", 0) + counts.get("failed", 0)
        click.echo(f"{item['id']}  {item['status']:<11} {ended}/{counts.get('total', 0)}  "
                   f"{when(item.get('created_at'))}  {item['endpoint']}")
    if page.get("has_more"):
        click.echo(f"(more: --after {page['last_id']})")


# --- bench -------------------------------------------------------------------------
@main.group(cls=LazyGroup, lazy_subcommands={
    "broker": "bench.broker_bench.broker_command",
    "ssjf": "bench.ssjf.ssjf_command",
    "cluster": "bench.cluster.cluster_command",
    "scale": "bench.scale.scale_command",
    "batch": "bench.batch_bench.batch_command",
    "replica-wait": "bench.replica_wait_bench.replica_wait_command",
    "fuzz": "bench.fuzz.fuzz_command",
    "chaos": "bench.chaos.chaos_command",
})
def bench() -> None:
    """Benchmarks (results are ratios measured side by side in one run)."""


if __name__ == "__main__":
    main()
