"""A speedrun GPT in transformers (written by `speedrun export`; torch and transformers only).

The same modules under the same parameter names as speedrun's `model.GPT`, for inference:
learned or rotary positions, LayerNorm or RMSNorm (no weights), QK-norm, a GELU or ReLU^2
MLP, and the parts no transformers class has: smear (each token's embedding plus a learned
share of the previous one's), a bigram embedding (a vector per pair of previous and current
token), value embeddings (a second embedding per block, added to its attention values) and
a logit soft-cap. Under a KV cache the look-backs need the token before the new ones:
`generate` passes it (`previous_ids`); a caller of `forward` with a cache passes it too.
Batches must be unpadded: padding would shift what each token looks back at.
"""

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_speedrun import SpeedrunConfig

# transformers 5.24 renamed `past_key_values` to `cache`; both are accepted and returned.
_CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} \
    else "past_key_values"


def _norm(config: SpeedrunConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, elementwise_affine=False)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


def _rotary(head_dim: int, start: int, length: int, theta: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    angles = torch.outer(torch.arange(start, start + length, dtype=torch.float32, device=device), inv_freq)
    return angles.cos(), angles.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Pairs (first half, second half) of each head, turned by each position's angles."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self, config: SpeedrunConfig, index: int):
        super().__init__()
        self.index, self.n_head, self.head_dim = index, config.n_head, config.n_embd // config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.qk_norm, self.rope = config.qk_norm, config.pos == "rope"

    def forward(self, x, rotary, cache, value_embedding):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).unbind(2)
        if value_embedding is not None:
            v = v + value_embedding.view(B, T, self.n_head, self.head_dim)
        if self.qk_norm:
            q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))
        if self.rope:
            cos, sin = rotary[0][:, None], rotary[1][:, None]
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, head_dim)
        if cache is not None:
            k, v = cache.update(k, v, self.index)
        S = k.shape[2]
        if S == T:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # the T new queries are the last of S positions
            allowed = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: SpeedrunConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.mlp_ratio * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.mlp_ratio * config.n_embd, config.n_embd, bias=config.bias)
        self.relu2 = config.mlp == "relu2"

    def forward(self, x):
        h = self.fc(x)
        return self.proj(F.relu(h).square() if self.relu2 else F.gelu(h))


class Block(nn.Module):
    def __init__(self, config: SpeedrunConfig, index: int):
        super().__init__()
        self.norm1, self.attn = _norm(config), Attention(config, index)
        self.norm2, self.mlp = _norm(config), MLP(config)

    def forward(self, x, rotary, cache, value_embedding):
        x = x + self.attn(self.norm1(x), rotary, cache, value_embedding)
        return x + self.mlp(self.norm2(x))


class Smear(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))


class Bigram(nn.Module):
    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.table = nn.Embedding(vocab_size * (vocab_size + 1), dim)


class SpeedrunForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = SpeedrunConfig
    base_model_prefix = ""
    _no_split_modules = ["Block"]
    _supports_sdpa = True

    def __init__(self, config: SpeedrunConfig):
        super().__init__(config)
        C = config.n_embd
        self.tok_emb = nn.Embedding(config.vocab_size, C)
        self.pos_emb = nn.Embedding(config.block_size, C) if config.pos == "learned" else None
        self.smear = Smear(C) if config.smear else None
        self.bigram = Bigram(config.vocab_size, C) if config.bigram else None
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.value_embeds = (nn.ModuleList(nn.Embedding(config.vocab_size, C) for _ in range(config.n_layer))
                             if config.value_embeddings else None)
        self.norm_f = _norm(config)
        self.head = nn.Linear(C, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self._tied_weights_keys = {"head.weight": "tok_emb.weight"}
        self.post_init()

    def get_input_embeddings(self):
        return self.tok_emb

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, attention_mask=None, cache=None, past_key_values=None, use_cache=None,
                labels=None, previous_ids=None, logits_to_keep=0, **kwargs):
        """previous_ids (B, 1): the token before input_ids[:, 0] when the cache holds earlier ones."""
        config = self.config
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("a speedrun model takes unpadded batches (padding would change what each token "
                             "looks back at); pass sequences of one length, or one at a time")
        cache = cache if cache is not None else past_key_values
        if use_cache and cache is None:
            cache = DynamicCache(config=config)
        T = input_ids.shape[1]
        start = cache.get_seq_length() if cache is not None else 0
        if start + T > config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds the model's context of {config.block_size}")
        if start and previous_ids is None and (self.smear is not None or self.bigram is not None):
            raise ValueError("with a cache, pass previous_ids: the token before input_ids (this model looks back "
                             "one token)")
        device = input_ids.device
        x = self.tok_emb(input_ids)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(start, start + T, device=device))
        if self.smear is not None:
            if start:
                before = self.tok_emb(previous_ids)
                if self.pos_emb is not None:
                    before = before + self.pos_emb(torch.tensor([start - 1], device=device))
            else:
                before = torch.zeros_like(x[:, :1])
            x = x + self.smear.weight.to(x.dtype) * torch.cat((before, x[:, :-1]), dim=1)
        if self.bigram is not None:
            first = previous_ids if start else torch.full_like(input_ids[:, :1], config.vocab_size)
            pairs = torch.cat((first, input_ids[:, :-1]), dim=1) * config.vocab_size + input_ids
            x = x + self.bigram.table(pairs)
        rotary = (_rotary(config.n_embd // config.n_head, start, T, config.rope_theta, device)
                  if config.pos == "rope" else None)
        for i, block in enumerate(self.blocks):
            ve = self.value_embeds[i](input_ids) if self.value_embeds is not None else None
            x = block(x, rotary, cache, ve)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.head(self.norm_f(x))
        if config.logit_softcap > 0:
            logits = config.logit_softcap * torch.tanh(logits / config.logit_softcap)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache if use_cache else None})

    def prepare_inputs_for_generation(self, input_ids, *args, **kwargs):
        """transformers' own, plus the token before the new ones, which smear and the bigram look back at."""
        inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        seen = input_ids.shape[1] - inputs["input_ids"].shape[1]
        if seen:
            inputs["previous_ids"] = input_ids[:, seen - 1:seen]
        return inputs
