"""`sluice predictor ...` commands (a click group the main CLI mounts; also `python -m predictor.cli`)."""
from __future__ import annotations

import json

import click


@click.group(name="predictor")
def predictor_group():
    """Output-length predictor: train, evaluate, predict, retrain from feedback."""


@predictor_group.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Artifact directory to write (default: predictor/artifacts/default).")
@click.option("--epochs", type=int, default=None, help="Fine-tuning epochs (default from TrainConfig).")
@click.option("--soup-seeds", type=int, default=None,
              help="Runs whose weights are averaged into one model (default from TrainConfig).")
@click.option("--arena-weight", type=int, default=None,
              help="Repeats of each Arena train prompt per epoch; 0 = AlpacaEval only (default from TrainConfig).")
@click.option("--version", default=None, help="Version name (default: timestamp).")
def train(out_dir, epochs, soup_seeds, arena_weight, version):
    """Fine-tune MiniLM on the bundled training splits (AlpacaEval and Arena) and write an artifact."""
    from predictor.predictor import DEFAULT_ARTIFACT_DIR
    from predictor.train import TrainConfig, train_default

    overrides = {k: v for k, v in {"epochs": epochs, "soup_seeds": soup_seeds,
                                               "arena_weight": arena_weight}.items() if v is not None}
    cfg = TrainConfig(**overrides)
    meta = train_default(out_dir or DEFAULT_ARTIFACT_DIR, cfg, version=version)
    click.echo(json.dumps({"version": meta["version"], "validation": meta["metrics"]["validation"],
                           "out": str(out_dir or DEFAULT_ARTIFACT_DIR)}))


@predictor_group.command(name="eval")
@click.option("--prompts", "prompts_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Score this file instead of the bundled sources' validation splits.")
@click.option("--lengths", "lengths_path", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--target-model", default=None,
              help="Model whose output lengths are the ground truth (with --prompts: required; without: "
                   "overrides every source's own target).")
@click.option("--artifact", type=click.Path(exists=True, file_okay=False), default=None)
@click.option("--include-trained", is_flag=True,
              help="Also score prompts the artifact was trained on (inflated; off by default).")
def eval_command(prompts_path, lengths_path, target_model, artifact, include_trained):
    """Score the predictor against real lengths; prints one JSON object. Never trains.

    Without --prompts: Kendall tau, Spearman and MAE on the validation prompts of each bundled source
    (AlpacaEval: Meta-Llama-3-8B-Instruct; Arena: gpt-4-0314), as that model and as an unknown model."""
    from predictor import data as D
    from predictor.evaluation import per_source_metrics, scored_prompts, target_and_unknown_metrics
    from predictor.predictor import LengthPredictor

    if prompts_path is not None and (lengths_path is None or target_model is None):
        raise click.UsageError("--prompts needs --lengths and --target-model")
    predictor = LengthPredictor.load(artifact)
    if prompts_path is None:
        sources = D.load_sources()
        targets = {name: target_model for name in sources} if target_model else None
        click.echo(json.dumps({"artifact_version": predictor.version,
                               "sources": per_source_metrics(predictor, sources, include_trained=include_trained,
                                                             targets=targets)}))
        return
    lengths = D.load_output_tokens(lengths_path)
    prompts = D.load_prompts(prompts_path)
    source = D.Source("file", prompts, lengths, target_model)
    trained = frozenset() if include_trained else frozenset(predictor.meta.get("trained_prompt_hashes", []))
    # A held-out score must not include prompts the proxy has seen.
    rows, skipped_trained = scored_prompts(source, [p.prompt_id for p in prompts], target_model, trained)
    if not rows:
        raise click.ClickException("no prompts with a length for the target model (after excluding trained)")
    result = target_and_unknown_metrics(predictor, rows, lengths, target_model)
    result.update({"artifact_version": predictor.version, "skipped_trained_prompts": skipped_trained})
    click.echo(json.dumps(result))


@predictor_group.command()
@click.argument("prompt_text")
@click.option("--served-model", default=None)
@click.option("--artifact", type=click.Path(exists=True, file_okay=False), default=None)
def predict(prompt_text, served_model, artifact):
    """Print the predicted output tokens for one prompt."""
    from predictor.predictor import LengthPredictor

    value = LengthPredictor.load(artifact).predict([prompt_text], served_model=served_model)[0]
    click.echo(f"{value:.1f}")


@predictor_group.command()
@click.option("--redis-url", default=None, help="Default: SLUICE_REDIS_URL.")
@click.option("--registry", "registry_root", type=click.Path(file_okay=False), default=None,
              help="Registry root (default: SLUICE_PREDICTOR_REGISTRY or <data_dir>/predictor-registry).")
@click.option("--base-artifact", type=click.Path(exists=True, file_okay=False), default=None)
@click.option("--fine-tune-encoder", is_flag=True,
              help="Fine-tune the whole model, not only the head (needs prompt text in the log: "
                   "SLUICE_KEEP_PROMPT_TEXT=true).")
@click.option("--encoder-epochs", type=int, default=1, show_default=True,
              help="Epochs over base data plus traffic with --fine-tune-encoder.")
def retrain(redis_url, registry_root, base_artifact, fine_tune_encoder, encoder_epochs):
    """Re-fit from the feedback log plus base data; publish a new version and move the pointer."""
    from core.redis_clients import sync_client
    from core.settings import Settings
    from predictor.feedback import retrain as retrain_from_feedback

    given = {"redis_url": redis_url, "predictor_registry": registry_root}
    settings = Settings(**{name: value for name, value in given.items() if value is not None})
    if not settings.redis_url:
        raise click.UsageError("no Redis: pass --redis-url or set SLUICE_REDIS_URL")
    client = sync_client(settings.redis_url)
    try:
        meta = retrain_from_feedback(client, base_artifact, settings.predictor_registry_dir,
                                     fine_tune_encoder=fine_tune_encoder, encoder_epochs=encoder_epochs)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(json.dumps({"version": meta["version"], "retrain": meta["retrain"],
                           "validation": meta["metrics"]["validation"]}))


@predictor_group.command(name="retrain-demo")
@click.option("--model", default=None, help="Served model whose Arena lengths are the traffic "
                                            "(default: Mistral-7B-Instruct-v0.1, unseen by the shipped artifact).")
@click.option("--redis-url", default=None, help="Default: SLUICE_REDIS_URL. The demo writes its own list there.")
@click.option("--base-artifact", type=click.Path(exists=True, file_okay=False), default=None)
@click.option("--fine-tune-encoder", is_flag=True, help="Retrain the whole model, not only the head.")
@click.option("--feedback-weight", type=float, default=1.0, show_default=True)
@click.option("--limit", type=int, default=None, help="Use only the first N traffic prompts.")
def retrain_demo(model, redis_url, base_artifact, fine_tune_encoder, feedback_weight, limit):
    """Retrain from one model's Arena train-split lengths fed through Redis; print held-out tau before/after."""
    import redis

    from core.settings import Settings
    from predictor import data as D
    from predictor.demo import run_demo

    url = redis_url or Settings().redis_url
    if not url:
        raise click.UsageError("no Redis: pass --redis-url or set SLUICE_REDIS_URL")
    try:
        result = run_demo(redis.Redis.from_url(url), model or D.DEMO_MODEL, base_artifact=base_artifact,
                          limit=limit, fine_tune_encoder=fine_tune_encoder, feedback_weight=feedback_weight)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(json.dumps(result))


if __name__ == "__main__":
    predictor_group(prog_name="sluice predictor")
