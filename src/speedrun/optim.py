"""Optimizers and learning-rate schedules.

`build_optimizer` returns one optimizer object that the trainer steps once:
plain AdamW, or Muon on the 2-D hidden weights with AdamW on
everything else (embeddings, the output head, norms and biases). Weight decay applies to
matrices only. Each param group keeps its peak learning rate in `peak_lr`;
`set_lr` scales all groups by the schedule's factor.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import OptimConfig
from .device import newton_schulz_dtype

# Coefficients of the quintic Newton-Schulz iteration tuned for speed of
# convergence of singular values towards 1 (Keller Jordan's Muon write-up).
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Approximately orthogonalise g (..., m, n): its singular values go to ~1."""
    a, b, c = NS_COEFFS
    x = g.to(dtype).reshape(-1, *g.shape[-2:])  # a batch of matrices, as baddbmm wants
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):  # x <- a x + (b G + c G G) x with G = x x^T; baddbmm fuses each scaling into its matmul
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.mT if tall else x).to(g.dtype).reshape(g.shape)




class Optimizer:
    """What the trainer asks of an optimizer: param groups holding their hyper-parameters,
    state per parameter, zero_grad, and a state dict in torch.optim's layout (so the
    checkpoints that torch's AdamW wrote still load). Written here rather than subclassing
    torch.optim.Optimizer, whose constructor imports torch._dynamo: 1.5 s of a 15 s run on
    a CPU, where nothing is compiled."""

    def __init__(self, groups: list[dict], defaults: dict):
        self.param_groups = [{**defaults, **g, "params": list(g["params"])} for g in groups]
        self.state: dict[torch.Tensor, dict] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    def state_dict(self) -> dict:
        """{"state": {index: state}, "param_groups": [hyper-parameters, "params": [index, ...]]},
        parameters numbered in group order, as torch.optim numbers them."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            ids = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        return {"state": {index[id(p)]: dict(s) for p, s in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, saved: dict) -> None:
        if [len(g["params"]) for g in saved["param_groups"]] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("the saved optimizer state has other parameter groups than this model's")
        params = [p for g in self.param_groups for p in g["params"]]
        for group, kept in zip(self.param_groups, saved["param_groups"]):
            group.update({k: v for k, v in kept.items() if k != "params"})
        self.state = {params[int(i)]: {k: float(v) if k == "step" else v.to(params[int(i)], copy=True)
                                       for k, v in s.items()} for i, s in saved["state"].items()}


class AdamW(Optimizer):
    """AdamW as torch's single-tensor implementation computes it (decoupled weight decay,
    bias-corrected moments), update for update: the tests hold it to torch.optim.AdamW."""

    def __init__(self, groups, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(groups, dict(betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.setdefault(p, {})
                if not state:
                    state.update(step=0.0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                step, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                p.mul_(1 - lr * wd)
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                denom = (v.sqrt() / (1 - beta2 ** step) ** 0.5).add_(eps)
                p.addcdiv_(m, denom, value=-lr / (1 - beta1 ** step))


class Muon(Optimizer):
    """Nesterov momentum, then the update is orthogonalised by Newton-Schulz
    and scaled by sqrt(max(1, rows/cols)) so tall and wide matrices move alike.
    Matrices of one shape are orthogonalised together, as one batch."""

    def __init__(self, groups, momentum=0.95, compute_dtype: torch.dtype = torch.float32):
        super().__init__(groups, dict(momentum=momentum, weight_decay=0.0))
        self.compute_dtype = compute_dtype

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            by_shape: dict[tuple, list] = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault(tuple(p.shape), []).append(p)
            for shape, params in by_shape.items():
                updates = []
                for p in params:
                    state = self.state.setdefault(p, {})
                    if not state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    buf = state["momentum_buffer"]
                    buf.lerp_(p.grad, 1 - mom)
                    updates.append(p.grad.lerp(buf, mom))  # Nesterov: look ahead along the momentum
                ortho = newton_schulz(torch.stack(updates), dtype=newton_schulz_dtype(params[0], self.compute_dtype))
                scale = max(1.0, shape[0] / shape[1]) ** 0.5
                for p, u in zip(params, ortho.unbind(0)):
                    if wd:
                        p.mul_(1 - lr * wd)
                    p.add_(u, alpha=-lr * scale)


class Optimizers:
    """Several optimizers stepped, zeroed and saved as one."""

    def __init__(self, optimizers: list[Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> list[dict]:
        return [o.state_dict() for o in self.optimizers]

    def load_state_dict(self, states: list[dict]) -> None:
        for o, s in zip(self.optimizers, states, strict=True):
            o.load_state_dict(s)


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Split parameters: hidden matrices, other matrices (embeddings, head), and the rest."""
    hidden, embeddings, other_matrices, vectors = [], [], [], []
    # input tables; one tied to the output head is the head's too and keeps optim.lr
    head = getattr(getattr(model, "head", None), "weight", None)
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and m.weight is not head}
    seen = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.dim() < 2:
            vectors.append(p)
        elif name.startswith("blocks."):
            hidden.append(p)
        elif cfg.embed_lr and id(p) in tables:
            embeddings.append(p)
        else:
            other_matrices.append(p)
    lr, embed_lr = (rate * width_scale(cfg, model) for rate in (cfg.lr, cfg.embed_lr))
    adam = dict(kind="adamw", peak_lr=lr)
    groups = [dict(params=embeddings, kind="adamw", peak_lr=embed_lr, weight_decay=cfg.weight_decay)]
    if cfg.name == "muon":
        groups += [dict(params=hidden, kind="muon", peak_lr=cfg.muon_lr, weight_decay=0.0),
                   dict(params=other_matrices, weight_decay=cfg.weight_decay, **adam)]
    else:
        groups += [dict(params=hidden + other_matrices, weight_decay=cfg.weight_decay, **adam)]
    groups.append(dict(params=vectors, weight_decay=0.0, **adam))
    return [g for g in groups if g["params"]]


def width_scale(cfg: OptimConfig, model: nn.Module) -> float:
    """sqrt(optim.lr_ref_width / width) on AdamW's rates (1 without a reference width): an
    embedding or head row's update moves the output by about lr x sqrt(width), so the rate
    falls as 1 / sqrt(width) to keep that fixed, the rule nanochat applies to its embedding
    and head rates, tuned at width 768 (muP, Yang et al. 2022, gives 1 / width for hidden
    layers; Muon's update is already normalised per matrix and is not scaled)."""
    return (cfg.lr_ref_width / model.cfg.n_embd) ** 0.5 if cfg.lr_ref_width else 1.0


def build_optimizer(model: nn.Module, cfg: OptimConfig, compute_dtype: torch.dtype = torch.float32) -> Optimizers:
    """AdamW, or Muon plus AdamW; Muon's Newton-Schulz runs in `compute_dtype` (the run's
    `Runtime.dtype`) where the matrices are large enough for it to pay."""
    groups = param_groups(model, cfg)
    for g in groups:
        g["lr"] = g["peak_lr"]
    muon = [g for g in groups if g["kind"] == "muon"]
    adam = [g for g in groups if g["kind"] == "adamw"]
    optimizers: list[Optimizer] = [AdamW(adam, betas=(cfg.beta1, cfg.beta2), eps=1e-8)]
    if muon:
        optimizers.append(Muon(muon, momentum=cfg.muon_momentum, compute_dtype=compute_dtype))
    return Optimizers(optimizers)


def lr_factor(cfg: OptimConfig, step: int, progress: float) -> float:
    """Multiplier on the peak learning rate.

    step counts optimizer steps taken so far (warmup is in steps); progress is
    the fraction of the run done after warmup, by steps or by the time budget.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    p = min(max(progress, 0.0), 1.0)
    low = cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * p))
    if cfg.schedule == "wsd":
        start = 1 - cfg.warmdown_fraction
        if p <= start or cfg.warmdown_fraction <= 0:
            return 1.0
        return 1 - (1 - low) * (p - start) / cfg.warmdown_fraction
    return 1.0


def set_lr(optimizer: Optimizers, factor: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g["peak_lr"] * factor
