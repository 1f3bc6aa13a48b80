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
@click.option("--version", default=None, help="Version name (default: timestamp).")
def train(out_dir, epochs, soup_seeds, version):
    """Fine-tune MiniLM on the bundled AlpacaEval training split and write an artifact."""
    from predictor.predictor import DEFAULT_ARTIFACT_DIR
    from predictor.train import TrainConfig, train_default

    overrides = {k: v for k, v in {"epochs": epochs, "soup_seeds": soup_seeds}.items() if v is not None}
    cfg = TrainConfig(**overrides)
    meta = train_default(out_dir or DEFAULT_ARTIFACT_DIR, cfg, version=version)
    click.echo(json.dumps({"version": meta["version"], "validation": meta["metrics"]["validation"],
                           "out": str(out_dir or DEFAULT_ARTIFACT_DIR)}))


@predictor_group.command(name="eval")
@click.option("--prompts", "prompts_path", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--lengths", "lengths_path", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--target-model", required=True, help="Model whose output lengths are the ground truth.")
@click.option("--artifact", type=click.Path(exists=True, file_okay=False), default=None)
@click.option("--include-trained", is_flag=True,
              help="Also score prompts the artifact was trained on (inflated; off by default).")
def eval_command(prompts_path, lengths_path, target_model, artifact, include_trained):
    """Score the predictor against real lengths; prints one JSON object. Never trains."""
    from predictor import data as D
    from predictor.metrics import length_prediction_metrics
    from predictor.predictor import LengthPredictor

    predictor = LengthPredictor.load(artifact)
    lengths = D.load_output_tokens(lengths_path)
    trained = set(predictor.meta.get("trained_prompt_hashes", []))
    rows, skipped_trained = [], 0
    for prompt in D.load_prompts(prompts_path):
        if target_model not in lengths.get(prompt.prompt_id, {}):
            continue
        if not include_trained and D.prompt_text_hash(prompt.prompt) in trained:
            skipped_trained += 1  # a held-out score must not include prompts the proxy has seen
            continue
        rows.append(prompt)
    if not rows:
        raise click.ClickException("no prompts with a length for the target model (after excluding trained)")
    predicted = predictor.predict([p.prompt for p in rows], served_model=target_model)
    result = length_prediction_metrics(predicted, [lengths[p.prompt_id][target_model] for p in rows])
    result.update({"target_model": target_model, "artifact_version": predictor.version,
                   "skipped_trained_prompts": skipped_trained})
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


if __name__ == "__main__":
    predictor_group(prog_name="sluice predictor")
