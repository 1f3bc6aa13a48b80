"""Roofline latency model of one vLLM engine (one instance, possibly tensor-parallel).

prefill(T tokens) = overhead + (2 * params * T + 2 * layers * hidden * T^2) / (tp * peak_flops * compute_eff)
decode step(B seqs, K KV tokens) =
    overhead + max((weight_bytes + K * kv_bytes_per_token) / (tp * mem_bw * bw_eff),
                   2 * params * B / (tp * peak_flops * compute_eff))
The per-step overhead stands for scheduling, sampling and kernel launches (plus all-reduce with TP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ModelSpec:
    name: str
    params: float
    layers: int
    hidden: int
    kv_heads: int
    head_dim: int
    bytes_per_param: int = 2  # bf16

    @property
    def weight_bytes(self) -> float:
        return self.params * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> float:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.bytes_per_param  # K and V


@dataclass(frozen=True)
class GpuSpec:
    name: str
    peak_flops: float  # dense bf16
    mem_bandwidth: float  # bytes/s
    mem_bytes: float


MODELS = {
    "llama-3-8b": ModelSpec("llama-3-8b", 8.03e9, 32, 4096, 8, 128),
    "llama-3-70b": ModelSpec("llama-3-70b", 70.6e9, 80, 8192, 8, 128),
}

GPUS = {
    "a100-80gb": GpuSpec("a100-80gb", 312e12, 2.039e12, 80e9),
    "h100-80gb": GpuSpec("h100-80gb", 989e12, 3.35e12, 80e9),  # SXM
}


@dataclass(frozen=True)
class EngineModel:
    model: ModelSpec
    gpu: GpuSpec
    tensor_parallel: int = 1
    compute_efficiency: float = 0.5  # achieved / peak FLOPs in prefill GEMMs
    bandwidth_efficiency: float = 0.7  # achieved / peak HBM bandwidth in decode
    step_overhead_s: float = 0.003  # per engine step, single GPU
    tp_overhead_s: float = 0.002  # extra per step when tensor_parallel > 1 (all-reduces)
    gpu_memory_utilization: float = 0.9  # vLLM's default share of HBM it may use
    activation_reserve_bytes: float = 2e9  # per GPU, for activations and CUDA graphs

    @property
    def overhead_s(self) -> float:
        return self.step_overhead_s + (self.tp_overhead_s if self.tensor_parallel > 1 else 0.0)

    @property
    def flops(self) -> float:
        return self.tensor_parallel * self.gpu.peak_flops * self.compute_efficiency

    @property
    def bandwidth(self) -> float:
        return self.tensor_parallel * self.gpu.mem_bandwidth * self.bandwidth_efficiency

    @property
    def kv_capacity_tokens(self) -> int:
        per_gpu = self.gpu.mem_bytes * self.gpu_memory_utilization - self.activation_reserve_bytes
        free = self.tensor_parallel * per_gpu - self.model.weight_bytes
        if free <= 0:
            raise ValueError(f"{self.model.name} does not fit on {self.tensor_parallel} x {self.gpu.name}")
        return int(free / self.model.kv_bytes_per_token)

    def prefill_compute_s(self, tokens):
        """Compute time of prefilling ``tokens`` (scalar or array), without the step overhead."""
        t = np.asarray(tokens, dtype=float)
        m = self.model
        return (2 * m.params * t + 2 * m.layers * m.hidden * t * t) / self.flops

    def decode_step_s(self, batch, kv_tokens):
        """One decode step for ``batch`` sequences holding ``kv_tokens`` KV entries in total."""
        b = np.asarray(batch, dtype=float)
        k = np.asarray(kv_tokens, dtype=float)
        memory = (self.model.weight_bytes + k * self.model.kv_bytes_per_token) / self.bandwidth
        compute = 2 * self.model.params * b / self.flops
        return self.overhead_s + np.maximum(memory, compute)


def engine(model: str = "llama-3-70b", gpu: str = "h100-80gb", tensor_parallel: int = 4, **overrides) -> EngineModel:
    return EngineModel(MODELS[model], GPUS[gpu], tensor_parallel, **overrides)


@dataclass(frozen=True)
class InstanceProfile:
    """One instance's throughput on a request mix, from the latency model alone (no workload replay)."""

    interactive_rps: float  # requests/s served with the mean ITL at the SLO
    interactive_batch: float  # running sequences at that rate
    batch_rps: float  # requests/s with no latency target (largest batch that fits)
    mean_tokens: float  # prompt + output tokens of a mean request (to convert to tokens/s)

    @property
    def interactive_tokens_per_s(self) -> float:
        return self.interactive_rps * self.mean_tokens


def _itl_at(eng: EngineModel, rps: float, prefill_s: float, ctx: float, gen: float, dt_s: float) -> tuple[float, float]:
    """(mean ITL, running sequences) at ``rps`` requests/s: prefill stalls decoding, Little's law gives the batch."""
    busy = rps * prefill_s + min(1.0, rps * dt_s) * eng.overhead_s / dt_s
    if busy >= 1.0:
        return math.inf, math.inf
    itl = float(eng.decode_step_s(1, ctx)) / (1.0 - busy)
    for _ in range(60):  # fixed point: batch = rps x decode time; the step grows with the batch
        batch = rps * max(gen - 1.0, 0.0) * itl
        new = float(eng.decode_step_s(batch, batch * (ctx + gen / 2))) / (1.0 - busy)
        if abs(new - itl) < 1e-9:
            break
        itl = new
    return itl, rps * max(gen - 1.0, 0.0) * itl


def instance_profile(
    eng: EngineModel,
    context_tokens: np.ndarray,
    generated_tokens: np.ndarray,
    itl_slo_s: float,
    max_batch: int,
    dt_s: float = 0.25,
) -> InstanceProfile:
    """Interactive capacity at the ITL SLO (bisection on the rate) and batch throughput, for a length mix."""
    ctx, gen = float(np.mean(context_tokens)), float(np.mean(generated_tokens))
    prefill_s = float(np.mean(eng.prefill_compute_s(context_tokens)))
    kv_batch = eng.kv_capacity_tokens / (ctx + gen)
    most = min(max_batch, kv_batch)

    def fits(rps: float) -> bool:
        itl, batch = _itl_at(eng, rps, prefill_s, ctx, gen, dt_s)
        return itl <= itl_slo_s and batch <= most

    lo, hi = 0.0, 1.0 / prefill_s
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    _, batch = _itl_at(eng, lo, prefill_s, ctx, gen, dt_s)
    step = float(eng.decode_step_s(most, most * (ctx + gen / 2)))
    per_request_s = prefill_s + max(gen - 1.0, 0.0) * step / most
    return InstanceProfile(lo, batch, 1.0 / per_request_s, ctx + gen)
