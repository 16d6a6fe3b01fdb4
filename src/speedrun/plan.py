"""A run planned before it starts: its size, FLOPs, memory per device, wall-clock and cost.

    budget_steps(train, params, tokens_per_step)   the steps of a token budget (train.tokens_per_param ...)
    make_plan(cfg, gpus, gpu, mfu, price)           a Plan: what `speedrun plan` prints
    GPUS                                            the GPU kinds a plan knows: peak, memory, price

Parameters are counted on a model built on the meta device (no memory, every
architecture flag included), with the vocabulary of the prepared dataset when there
is one, else the recipe's (a character tokenizer's alphabet is assumed to be 256).

FLOPs per token are `flops.flops_per_token`: 6 x the weights in matrix multiplies
(all but the input embedding tables) + 12 x layers x width x context for attention,
nanochat's count. Training FLOPs are that x tokens; an evaluated token costs a third
of a trained one (a forward without the backward).

Seconds = FLOPs / (devices x peak x MFU), plus setup (process start, the dataset's
preparation when it is not prepared yet) and compilation. On a CPU the peak is this
machine's measured one (`flops.peak_flops`) and the MFU that finished runs of the
nearest size reached here (`flops.known_mfu`); on a GPU kind the published dense bf16
peak and an MFU stated as assumed until a run on that GPU has measured one.

Memory per device, in bytes: fp32 weights (4 per parameter) and gradients (4), the
optimizer's state (AdamW 8 per parameter it steps, Muon 4 for its momentum), DDP's
gradient buckets (4 per parameter, with more than one process), and activations per
sequence of the device batch, counted as the tensors autograd keeps (SDPA keeps no
T x T scores). Per layer, in values of context x width: eager, 10 + 3 x mlp_ratio (the
norms' inputs and outputs, q, k, v, the attention output, the MLP's hidden layer after
its nonlinearity and after the square or GELU); compiled, 6 + mlp_ratio (inductor
recomputes the pointwise ops in the backward, keeping the matmuls' inputs and outputs).
The logits, context x vocabulary: the compute dtype, then fp32 for the loss and its
gradient (and the soft-cap's output, eager). With checkpointed activations a layer
keeps only its input, and one layer's activations exist at a time. These are counts,
not measurements: allocator slack and temporaries come on top, so a plan fills at most
90% of a device.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

from .config import Config, TextData, TrainConfig

GIB = 1024 ** 3
HEADROOM = 0.9  # the share of a device's memory a plan fills
CPU_ASSUMED_MFU = 0.3  # a CPU plan's MFU before any run has finished on this machine
GPU_ASSUMED_MFU = 0.4  # a GPU plan's MFU until a run on that GPU has measured one
STARTUP_SECONDS = 2.0  # process start: Python, torch and speedrun imported (~1.5 s on a 2-core EPYC)
PREPARE_BYTES_PER_SECOND = 7e6  # preparation on 2 cores (benchmarks/data.py: 7.1 MB/s of distinct text)
GPU_COMPILE_SECONDS = 60.0  # torch.compile of a GPT-2-sized step on a GPU, assumed
CPU_COMPILE_SECONDS = 30.0  # torch.compile of a small step on 2 CPU cores, assumed


@dataclass(frozen=True)
class GpuKind:
    name: str
    match: str  # what the GPU's name holds, for the runs remembered on one (flops.known_mfu)
    peak: float  # dense bf16 FLOP/s, as published
    memory: float  # bytes
    price: float | None  # USD per GPU-hour, when a published figure gives one
    source: str


GPUS = {
    "h100": GpuKind("NVIDIA H100 SXM 80GB", "H100", 989e12, 80 * GIB, 3.0,
                    "NVIDIA H100 datasheet: 989 TFLOP/s dense BF16 (SXM); $3/GPU-hour is nanochat's "
                    "$24/hour 8 x H100 node"),
    "a100": GpuKind("NVIDIA A100 SXM 80GB", "A100", 312e12, 80 * GIB, None, "NVIDIA A100 datasheet: 312 TFLOP/s dense BF16"),
    "4090": GpuKind("NVIDIA GeForce RTX 4090", "4090", 165.2e12, 24 * GIB, None,
                    "NVIDIA Ada whitepaper: 165.2 TFLOP/s dense BF16 with FP32 accumulate"),
}


def token_budget(train: TrainConfig, params: int) -> int:
    """The run's token budget: train.tokens, or train.tokens_per_param x all parameters
    (nanochat's and Chinchilla's count); 0 when it has none."""
    return train.tokens or round(train.tokens_per_param * params)


def budget_steps(train: TrainConfig, params: int, tokens_per_step: int) -> int | None:
    """Steps that train on the token budget (rounded up), or None without one."""
    tokens = token_budget(train, params)
    return math.ceil(tokens / tokens_per_step) if tokens else None


# --- sizes ----------------------------------------------------------------------
def vocabulary(cfg: Config, manifest: dict | None) -> tuple[int, str]:
    """(vocabulary size, where it comes from) without building the tokenizer."""
    if cfg.model.vocab_size:
        return cfg.model.vocab_size, "model.vocab_size"
    if manifest is not None:
        return manifest["vocab_size"], "the prepared dataset"
    data = cfg.data
    if isinstance(data, TextData) and data.tokenizer == "bpe":
        return data.vocab_size, "data.vocab_size"
    if isinstance(data, TextData):
        return 256, "assumed: a character tokenizer learns its alphabet from the data"
    return 4096, "assumed"


def meta_model(cfg: Config, vocab: int):
    """The run's model on the meta device: shapes and parameter counts, no memory."""
    import torch

    from .model import GPT

    with torch.device("meta"):
        return GPT(dataclasses.replace(cfg.model, vocab_size=vocab))


@dataclass
class Sizes:
    params: int
    embeddings: int  # input tables (a tied table counts as the head's)
    matrices: int  # weights in matrix multiplies: the blocks and the head
    muon: int  # parameters Muon steps (0 under AdamW)
    flops_per_token: float


def model_sizes(cfg: Config, vocab: int) -> Sizes:
    import torch

    from .flops import flops_per_token

    model = meta_model(cfg, vocab)
    head = model.head.weight
    tables = sum(m.weight.numel() for m in model.modules()
                 if isinstance(m, torch.nn.Embedding) and m.weight is not head)
    blocks = sum(p.numel() for p in model.blocks.parameters())
    muon = sum(p.numel() for p in model.blocks.parameters() if p.dim() >= 2) if cfg.optim.name == "muon" else 0
    return Sizes(model.num_params(), tables, blocks + head.numel(), muon,
                 flops_per_token(model, cfg.model.block_size))


def memory_bytes(cfg: Config, sizes: Sizes, vocab: int, device_batch: int, processes: int,
                 act_bytes: int, checkpointed: bool, compiled: bool) -> dict:
    """Bytes per device, by what holds them (see the module's docstring)."""
    m = cfg.model
    T, d, L = m.block_size, m.n_embd, m.n_layer
    kept = 6 + m.mlp_ratio if compiled else 10 + 3 * m.mlp_ratio
    per_layer = kept * T * d * act_bytes  # one sequence, one layer
    logits = T * vocab * (act_bytes + (4 if compiled else 8 + (4 if m.logit_softcap else 0)))
    layers = (L * T * d * act_bytes + per_layer) if checkpointed else L * per_layer
    return {
        "weights": 4 * sizes.params,
        "gradients": 4 * sizes.params,
        "optimizer": 8 * (sizes.params - sizes.muon) + 4 * sizes.muon,
        "ddp_buckets": 4 * sizes.params if processes > 1 else 0,
        "activations": device_batch * (layers + logits + 4 * T * d),
    }


def largest_batch(cfg: Config, sizes: Sizes, vocab: int, processes: int, act_bytes: int, checkpointed: bool,
                  compiled: bool, memory: float) -> int:
    """The largest device batch whose estimate fits HEADROOM of `memory` (0: not even one)."""
    fixed = sum(memory_bytes(cfg, sizes, vocab, 0, processes, act_bytes, checkpointed, compiled).values())
    one = memory_bytes(cfg, sizes, vocab, 1, processes, act_bytes, checkpointed, compiled)["activations"]
    return max(0, int((memory * HEADROOM - fixed) // one))


# --- the plan -------------------------------------------------------------------
@dataclass
class Plan:
    recipe: str
    device: str
    devices: int
    dtype: str
    vocab: int
    vocab_from: str
    sizes: Sizes
    device_batch: int
    grad_accum: int  # per process
    tokens_per_step: int
    steps: int
    steps_from: str
    tokens: int
    flops: float
    peak: float
    peak_from: str
    mfu: float
    mfu_from: str
    seconds: dict  # setup, compile, train, eval, total
    memory: dict  # bytes per device, by what holds them
    memory_checkpointed: dict
    largest_batch: int
    largest_batch_checkpointed: int
    device_memory: float
    price: float | None
    notes: list = field(default_factory=list)

    @property
    def cost(self) -> float | None:
        return None if self.price is None else self.seconds["total"] / 3600 * self.devices * self.price

    def as_dict(self) -> dict:
        s = self.sizes
        return {
            "recipe": self.recipe, "device": self.device, "devices": self.devices, "dtype": self.dtype,
            "parameters": s.params, "parameters_embeddings": s.embeddings, "parameters_matrices": s.matrices,
            "vocab_size": self.vocab, "vocab_from": self.vocab_from,
            "tokens": self.tokens, "tokens_per_step": self.tokens_per_step, "steps": self.steps,
            "steps_from": self.steps_from, "device_batch": self.device_batch, "grad_accum": self.grad_accum,
            "flops_per_token": s.flops_per_token, "flops": self.flops,
            "peak_flops": self.peak, "peak_from": self.peak_from, "mfu": self.mfu, "mfu_from": self.mfu_from,
            "seconds": self.seconds["total"], "seconds_by_phase": self.seconds,
            "memory_bytes_per_device": sum(self.memory.values()), "memory_by_part": self.memory,
            "memory_bytes_per_device_checkpointed": sum(self.memory_checkpointed.values()),
            "device_memory_bytes": self.device_memory,
            "largest_device_batch": self.largest_batch,
            "largest_device_batch_checkpointed": self.largest_batch_checkpointed,
            "usd_per_device_hour": self.price, "usd": self.cost, "notes": self.notes,
        }


def make_plan(cfg: Config, gpus: int = 1, gpu: str = "cpu", mfu: float | None = None,
              price: float | None = None) -> Plan:
    """The plan of `cfg` on `gpus` devices of kind `gpu` ("cpu" or a key of GPUS)."""
    import torch

    from .compilation import should_compile
    from .data.preparation import prepared_manifest
    from .device import Runtime, pick_dtype
    from .flops import known_mfu, peak_flops

    notes = []
    mfu_from = "given (--mfu)"
    manifest = prepared_manifest(cfg.data) if isinstance(cfg.data, TextData) else None
    vocab, vocab_from = vocabulary(cfg, manifest)
    sizes = model_sizes(cfg, vocab)
    t, m = cfg.train, cfg.model
    if t.grad_accum % gpus:
        notes.append(f"train.grad_accum = {t.grad_accum} is not a multiple of {gpus} processes: "
                     f"training would refuse it; set train.batch_tokens or train.grad_accum")
    tokens_per_step = t.batch_size * t.grad_accum * m.block_size
    if gpu == "cpu":
        device = torch.device("cpu")
        dtype = pick_dtype(cfg.dtype, device, m.n_embd)
        peak, peak_from = peak_flops(device, dtype), "measured on this machine (flops.peak_flops)"
        known = known_mfu(device, dtype, sizes.flops_per_token)
        if mfu is None and known is not None:
            mfu, mfu_from = known["mfu"], (f"reached here by {known['recipe']} ({known['flops_per_token']:,.0f} "
                                           f"FLOPs per token, {known['measured']})")
        device_memory = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        act_bytes = 2 if dtype != torch.float32 else 4
        kind_name = "cpu"
    else:
        kind, device = GPUS[gpu], torch.device("cuda")
        dtype = torch.float32 if cfg.dtype == "float32" else torch.bfloat16
        peak, peak_from, device_memory, act_bytes = kind.peak, kind.source, kind.memory, 2
        kind_name = kind.name
        price = kind.price if price is None else price
        known = known_mfu(device, dtype, sizes.flops_per_token, gpu_name=kind.match)
        if mfu is None and known is not None and known.get("peak_flops"):
            # a run measures against the GPU's measured matmul peak; the plan's is the data sheet's
            mfu = known["mfu"] * known["peak_flops"] / kind.peak
            mfu_from = (f"reached by {known['recipe']} on a {kind.match} ({known['flops_per_token']:,.0f} FLOPs "
                        f"per token, {known['measured']}), against the data-sheet peak")
        if dtype == torch.float32:
            notes.append("dtype float32 on a GPU: the plan's peak is bf16's; expect far lower throughput")
    if mfu is None:
        mfu = CPU_ASSUMED_MFU if gpu == "cpu" else GPU_ASSUMED_MFU
        mfu_from = "assumed (no run has measured it on this kind yet); pass --mfu"
    rate = gpus * peak * mfu  # FLOP/s of the whole run

    # steps: a task's epochs, a token budget, a time budget or train.steps, capped by max_steps
    steps_from = "train.steps"
    setup = STARTUP_SECONDS
    if isinstance(cfg.data, TextData) and manifest is None and cfg.data.source:
        from .data.sources import source_bytes

        size = source_bytes(cfg.data.source) or 0
        setup += size / PREPARE_BYTES_PER_SECOND
        notes.append(f"the data is not prepared yet: ~{size / PREPARE_BYTES_PER_SECOND:,.0f} s to prepare "
                     f"{size / 1e6:,.0f} MB at 2 cores' rate (speedrun prepare does it once)")
    step_seconds = tokens_per_step * sizes.flops_per_token / rate
    eval_one = eval_tokens(cfg, manifest)
    final_eval = eval_one * (2 if isinstance(cfg.data, TextData) and cfg.data.test_fraction > 0 else 1)
    eval_flops_per_token = sizes.flops_per_token / 3
    per_eval = between_evals_tokens(cfg, eval_one) * eval_flops_per_token / rate
    final_eval_s = final_eval * eval_flops_per_token / rate
    if isinstance(cfg.data, TextData) and cfg.data.epochs > 0 and manifest is not None:
        steps = max(1, math.ceil(cfg.data.epochs * manifest["splits"]["train"]["tokens"] / tokens_per_step))
        steps_from = f"data.epochs = {cfg.data.epochs}"
    elif budgeted := budget_steps(t, sizes.params, tokens_per_step):
        steps = budgeted
        steps_from = (f"train.tokens_per_param = {t.tokens_per_param:g}" if t.tokens_per_param
                      else f"train.tokens = {t.tokens:,}")
    else:
        steps = t.steps
    # train.compile=auto decided by the trainer's own rule, on the peak of one device as it sees it
    compiled = should_compile(cfg, Runtime(device, dtype), steps, tokens_per_step, sizes.flops_per_token, peak)
    compile_s = (GPU_COMPILE_SECONDS if gpu != "cpu" else CPU_COMPILE_SECONDS) if compiled else 0.0
    if t.time_budget > 0:
        left = max(0.0, t.time_budget - setup - compile_s)
        per_step = step_seconds + (per_eval / t.eval_every if t.eval_every else 0.0)
        steps = int(left / per_step)
        steps_from = f"train.time_budget = {t.time_budget:g} s"
    if t.max_steps:
        steps = min(steps, t.max_steps)
    n_evals = steps // t.eval_every if t.eval_every else 0
    train_s = steps * step_seconds
    eval_s = n_evals * per_eval + final_eval_s
    total = setup + compile_s + train_s + eval_s
    seconds = {"setup": setup, "compile": compile_s, "train": train_s, "eval": eval_s, "total": total}
    per_process_accum = max(1, t.grad_accum // gpus)
    mem = memory_bytes(cfg, sizes, vocab, t.batch_size, gpus, act_bytes, m.checkpoint_activations, compiled)
    mem_ckpt = memory_bytes(cfg, sizes, vocab, t.batch_size, gpus, act_bytes, True, compiled)
    biggest = largest_batch(cfg, sizes, vocab, gpus, act_bytes, m.checkpoint_activations, compiled, device_memory)
    biggest_ckpt = largest_batch(cfg, sizes, vocab, gpus, act_bytes, True, compiled, device_memory)
    if sum(mem.values()) > device_memory * HEADROOM:
        notes.append(f"train.batch_size = {t.batch_size} does not fit one device's memory: the largest that "
                     f"does is {biggest} ({biggest_ckpt} with model.checkpoint_activations=true); "
                     f"lower train.batch_size (train.batch_tokens, or a higher train.grad_accum, keeps the "
                     f"tokens per step)")
    return Plan(cfg.recipe or cfg.task, kind_name, gpus, str(dtype).replace("torch.", ""), vocab, vocab_from,
                sizes, t.batch_size, per_process_accum, tokens_per_step, steps, steps_from,
                steps * tokens_per_step, steps * tokens_per_step * sizes.flops_per_token, peak, peak_from, mfu,
                mfu_from, seconds, mem, mem_ckpt, biggest, biggest_ckpt, device_memory, price, notes)


def eval_tokens(cfg: Config, manifest: dict | None) -> int:
    """Tokens a whole evaluation of the validation split scores."""
    if not isinstance(cfg.data, TextData):
        return 0
    n = cfg.data.eval_tokens
    if manifest is not None and manifest["splits"].get("val"):
        split = max(0, manifest["splits"]["val"]["tokens"] - 1)
        n = min(n, split) if n else split
    return n


def between_evals_tokens(cfg: Config, whole: int) -> int:
    """Tokens each evaluation during training scores: a sampled estimate of
    data.eval_batches batches where a recipe asks for one, else the whole split."""
    data = cfg.data
    if isinstance(data, TextData) and data.eval_batches > 0:
        return min(whole, data.eval_batches * cfg.train.batch_size * cfg.model.block_size)
    return whole


# --- printing -------------------------------------------------------------------
def _count(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def _duration(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.2f} h"
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.1f} s"


def describe(plan: Plan) -> str:
    """The plan as a short table a person reads before starting the run."""
    s, gib = plan.sizes, GIB
    mem, ck = sum(plan.memory.values()), sum(plan.memory_checkpointed.values())
    sec = plan.seconds
    lines = [
        f"plan for {plan.recipe} on {plan.devices} x {plan.device} ({plan.dtype})",
        f"  parameters     {_count(s.params)} ({s.params:,}): embeddings {_count(s.embeddings)}, "
        f"matrices {_count(s.matrices)}; vocabulary {plan.vocab:,} ({plan.vocab_from})",
        f"  tokens         {_count(plan.tokens)} = {plan.steps:,} steps x {plan.tokens_per_step:,} "
        f"({plan.steps_from}); device batch {plan.device_batch}, {plan.grad_accum} micro-batch"
        f"{'es' if plan.grad_accum != 1 else ''} per step per device",
        f"  FLOPs          {plan.flops:.3g} ({s.flops_per_token:,.0f} per token)",
        f"  memory/device  {mem / gib:.2f} GiB (weights {plan.memory['weights'] / gib:.2f}, gradients "
        f"{plan.memory['gradients'] / gib:.2f}, optimizer {plan.memory['optimizer'] / gib:.2f}, "
        f"activations {plan.memory['activations'] / gib:.2f}"
        + (f", DDP buckets {plan.memory['ddp_buckets'] / gib:.2f}" if plan.memory["ddp_buckets"] else "")
        + f"); {ck / gib:.2f} GiB with checkpointed activations, of {plan.device_memory / gib:.0f} GiB",
        f"  largest batch  {plan.largest_batch} per device ({plan.largest_batch_checkpointed} with "
        f"model.checkpoint_activations=true)",
        f"  throughput     {plan.mfu:.0%} MFU ({plan.mfu_from}) of {plan.peak / 1e12:,.3g} TFLOP/s per device "
        f"({plan.peak_from})",
        f"  wall-clock     {_duration(sec['total'])}: setup {_duration(sec['setup'])}, compile "
        f"{_duration(sec['compile'])}, training {_duration(sec['train'])}, evaluation {_duration(sec['eval'])}",
    ]
    if plan.cost is not None:
        lines.append(f"  cost           ${plan.cost:,.2f} at ${plan.price:g} per device-hour")
    lines += [f"  note: {n}" for n in plan.notes]
    return "\n".join(lines)
