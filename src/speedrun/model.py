"""A GPT in one file: the GPT-2 block and the modern options as config switches.

GPT-2 style: learned positions, LayerNorm, GELU MLP, tied embeddings.
Modern options: rotary positions, RMSNorm, QK-norm, ReLU^2 MLP, zero-initialised
output projections (each block starts as the identity), untied head, logit
soft-capping, "smear" (a learned share of the previous token's embedding added
to each token's, a one-token look-back before any attention), a bigram embedding
(a learned vector for each pair of previous and current token, for small
vocabularies such as characters) and value embeddings
(a second embedding of each token, per block, added to that block's attention
values). Attention always goes through `scaled_dot_product_attention`, so
CUDA gets flash attention and the CPU its fused kernel.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.utils.checkpoint
import torch.nn as nn
import torch.nn.functional as F

from .config import ConfigError, ModelConfig

IGNORE_INDEX = -100  # a target that does not count in the loss (the prompt, padding, a user's turn)


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(dim, elementwise_affine=False)
    return nn.LayerNorm(dim, bias=cfg.bias)


def rotary_tables(head_dim: int, length: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of each head by position-dependent angles."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention of T new queries over S >= T cached positions (the queries are the
    last T), for inference. Written out as two batched matmuls: at the tiny T and S
    of cached decoding this runs about 2x faster on a CPU than SDPA's fused kernel,
    whose fixed cost per (batch, head) dominates there."""
    B, H, T, D = q.shape
    S = k.shape[2]
    bias = torch.full((T, S), float("-inf"), device=q.device, dtype=q.dtype).triu(S - T + 1)
    scores = torch.baddbmm(bias.expand(B * H, T, S), q.reshape(B * H, T, D),
                           k.reshape(B * H, S, D).transpose(1, 2), alpha=D ** -0.5)
    # softmax written out: over a last dimension this short, torch.softmax is ~3x slower on a CPU
    weights = (scores - scores.amax(-1, keepdim=True)).exp_()
    weights = weights / weights.sum(-1, keepdim=True)
    return torch.bmm(weights, v.reshape(B * H, S, D)).view(B, H, T, D)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.qk_norm = cfg.qk_norm
        self.rope = cfg.pos == "rope"
        self.dropout = cfg.dropout

    def forward(self, x, rotary, cache, start, keep=0, value_embedding=None):
        """keep > 0: outputs for the last `keep` positions only (keys and values still for all)."""
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim)
        qk, v = qkv.split((2, 1), dim=2)  # queries and keys normed and rotated in one go; split, unlike
        v = v.squeeze(2)                   # indexing, does not zero-fill a qkv-sized gradient in backward
        if value_embedding is not None:
            v = v + value_embedding.view(B, T, self.n_head, self.head_dim)
        if self.qk_norm:
            qk = F.rms_norm(qk, (self.head_dim,))
        if self.rope:
            qk = apply_rotary(qk, rotary[0][start:start + T, None, None], rotary[1][start:start + T, None, None])
        q, k = qk.unbind(2)
        if keep:
            q, T = q[:, -keep:], keep
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, head_dim)
        if cache is not None:
            if cache:  # append this chunk's keys and values to the ones already seen
                k, v = torch.cat((cache[0], k), dim=2), torch.cat((cache[1], v), dim=2)
            cache[:] = [k, v]
        S = k.shape[2]
        if T == S:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               dropout_p=self.dropout if self.training else 0.0)
        else:
            y = cached_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.mlp_ratio * cfg.n_embd
        self.fc = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)
        self.proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.relu2 = cfg.mlp == "relu2"

    def forward(self, x):
        h = self.fc(x)
        h = F.relu(h).square() if self.relu2 else F.gelu(h)
        return self.proj(h)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1, self.attn = make_norm(cfg, cfg.n_embd), Attention(cfg)
        self.norm2, self.mlp = make_norm(cfg, cfg.n_embd), MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rotary, cache, start, keep=0, value_embedding=None):
        attended = self.drop(self.attn(self.norm1(x), rotary, cache, start, keep, value_embedding))
        x = (x[:, -keep:] if keep else x) + attended
        return x + self.drop(self.mlp(self.norm2(x)))


class Smear(nn.Module):
    """x_t + w * x_(t-1), with w learned per channel and zero at the start (the model
    begins as without it). The first position of a sequence looks back at nothing;
    under a KV cache `last` carries the previous chunk's final embedding across calls."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x, last=None):
        previous = F.pad(x[:, :-1], (0, 0, 1, 0))
        if last:
            previous = torch.cat((last[0], previous[:, 1:]), dim=1)
        if last is not None:
            last[:] = [x[:, -1:]]
        return x + self.weight.to(x.dtype) * previous


class Bigram(nn.Module):
    """A learned vector for each (previous, current) token pair, zero at the start (the
    model begins as without it): a one-layer model gets the pair's statistics from a
    table instead of computing them. vocab x (vocab + 1) rows: the extra previous
    token is "nothing before", at the first position of a sequence; under a KV cache
    `last` carries the previous chunk's final token across calls."""

    MAX_VOCAB = 256  # 65,792 rows; a BPE vocabulary of 1,024 would need a million

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        if vocab_size > self.MAX_VOCAB:
            raise ConfigError(f"model.bigram = true needs a vocabulary of at most {self.MAX_VOCAB} tokens "
                              f"(characters or bytes), this one has {vocab_size}; use model.bigram=false")
        self.vocab_size = vocab_size
        self.table = nn.Embedding(vocab_size * (vocab_size + 1), dim)

    def forward(self, idx, last=None):
        previous = F.pad(idx[:, :-1], (1, 0), value=self.vocab_size)
        if last:
            previous = torch.cat((last[0], previous[:, 1:]), dim=1)
        if last is not None:
            last[:] = [idx[:, -1:]]
        return self.table(previous * self.vocab_size + idx)


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError("model.vocab_size must be set (the task's tokenizer sets it)")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.smear = Smear(cfg.n_embd) if cfg.smear else None
        self.bigram = Bigram(cfg.vocab_size, cfg.n_embd) if cfg.bigram else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.value_embeds = (nn.ModuleList(nn.Embedding(cfg.vocab_size, cfg.n_embd) for _ in range(cfg.n_layer))
                             if cfg.value_embeddings else None)
        self.norm_f = make_norm(cfg, cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        if cfg.pos == "rope":
            cos, sin = rotary_tables(cfg.n_embd // cfg.n_head, cfg.block_size)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)
        if self.bigram is not None:
            nn.init.zeros_(self.bigram.table.weight)
        for block in self.blocks:  # residual projections: GPT-2's depth scaling, or zero
            for proj in (block.attn.proj, block.mlp.proj):
                if cfg.zero_init_proj:
                    nn.init.zeros_(proj.weight)
                else:
                    nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None, cache=None, start=0, last=0):
        """Logits for `idx` (B, T); with targets, also the mean cross-entropy.

        targets use IGNORE_INDEX for positions that do not count. `cache` is a list of
        per-layer [k, v] lists filled as generation proceeds; `start` is the
        position of idx[:, 0]. `last` > 0 computes logits only for the last
        positions (evaluation and generation need no more).
        """
        B, T = idx.shape
        if start + T > self.cfg.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.cfg.block_size}")
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(start, start + T, device=idx.device))
        look_backs = iter(cache[len(self.blocks):] if cache is not None else ())
        if self.smear is not None:
            x = self.smear(x, next(look_backs, None))
        if self.bigram is not None:
            x = x + self.bigram(idx, next(look_backs, None))
        x = self.drop(x)
        rotary = (self.rope_cos, self.rope_sin) if self.cfg.pos == "rope" else None
        for i, block in enumerate(self.blocks):
            # the last block computes only the positions whose logits are asked for
            keep = last if last and i == len(self.blocks) - 1 else 0
            ve = self.value_embeds[i](idx) if self.value_embeds is not None else None
            if self.cfg.checkpoint_activations and self.training and cache is None and torch.is_grad_enabled():
                # keep only the block's input; its activations are computed again in the backward
                x = torch.utils.checkpoint.checkpoint(block, x, rotary, None, start, keep, ve, use_reentrant=False)
            else:
                x = block(x, rotary, cache[i] if cache is not None else None, start, keep, ve)
        logits = self.head(self.norm_f(x))
        if self.cfg.logit_softcap > 0:
            cap = self.cfg.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        return logits, loss

    def new_cache(self) -> list[list]:
        """One [k, v] list per block, then the look-backs' carry: the smear's last embedding
        and the bigram's last token, for those the model has."""
        look_backs = [m for m in (self.smear, self.bigram) if m is not None]
        return [[] for _ in self.blocks] + [[] for _ in look_backs]


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """Eval mode (no dropout) inside the block, the previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.inference_mode()
def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, stop_token: int | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
    """Continue idx (B, T). temperature 0 is greedy argmax, not a tiny temperature.

    The model sees at most its last block_size tokens. With the KV cache, only the
    new token is fed at each step; once the cache holds a full block it is rebuilt
    from the last block_size tokens, so the result equals recomputing without it.
    """
    block = model.cfg.block_size
    cache, pos, feed = None, 0, idx[:, -block:]
    for _ in range(max_new_tokens):
        if not use_cache:
            logits = model(idx[:, -block:], last=1)
        else:
            if cache is None or pos + feed.shape[1] > block:
                cache, pos, feed = model.new_cache(), 0, idx[:, -block:]
            logits = model(feed, cache=cache, start=pos, last=1)
            pos += feed.shape[1]
        nxt = sample_next(logits[:, -1].float(), temperature, top_k, top_p, generator)
        idx = torch.cat((idx, nxt), dim=1)
        feed = nxt
        if stop_token is not None and bool((nxt == stop_token).all()):
            break
    return idx


@torch.inference_mode()
def continuation_logprob(model: GPT, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """log p(continuation | context), summed over its tokens, and whether greedy decoding
    would have produced it: what evaluation harnesses call a log-likelihood request.
    Context and continuation together must fit in the model's block."""
    ids = torch.tensor([context + continuation], device=next(model.parameters()).device)
    logprobs = model(ids[:, :-1])[0, len(context) - 1:].float().log_softmax(-1)
    wanted = ids[0, len(context):]
    return logprobs.gather(-1, wanted[:, None]).sum().item(), bool((logprobs.argmax(-1) == wanted).all())


def sample_next(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)
