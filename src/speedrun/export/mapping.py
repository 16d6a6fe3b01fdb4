"""Which transformers class computes what our model computes, and where each tensor goes.

`--to hf` writes weights under an architecture `transformers` already ships, so
`AutoModelForCausalLM.from_pretrained(folder)` needs no `trust_remote_code`. Each
speedrun block maps to the one class that computes exactly what it computes
(read from the transformers source, then checked by comparing logits):

    learned positions, LayerNorm (GPT-2 style)   -> GPT2LMHeadModel
    RoPE, RMSNorm, no QK-norm                    -> ArceeForCausalLM
    RoPE, RMSNorm, QK-norm                       -> ApertusForCausalLM

GPT-2 and Arcee/Apertus rotate (first half, second half) pairs with the same
sign as ours, put a norm before attention and before the MLP, and scale
attention by 1/sqrt(head size). Arcee and Apertus have an MLP without a gate
and a configurable activation (`gelu` is the exact erf GELU, as ours; `relu2`
is ReLU squared), and Apertus normalises each head's queries and keys before
RoPE, as we do. Our norms have no weights and use PyTorch's default epsilon
(float32's machine epsilon), so theirs get weights of one and that epsilon;
biases our model lacks are zeros.

What no class computes exactly goes to the export's own modeling code instead
(`remote/`, loaded with trust_remote_code), under our own parameter names:
smear, the bigram and value embeddings, a logit soft-cap (NanoChatForCausalLM
soft-caps but also normalises the token embeddings before the first layer,
which ours does not), LayerNorm with RoPE, RMSNorm or QK-norm with learned
positions, and biases with QK-norm.

The GGUF file (`to_gguf`) uses the same tensors under llama.cpp's names (its
`gpt2`, `arcee` and `apertus` architectures), and both formats take the same
special tokens, so the tables for both are here.
"""

from __future__ import annotations

import torch

from ..chat.template import ASSISTANT_END, BOS, CHAT_SPECIAL_TOKENS
from ..config import ConfigError, ModelConfig
from ..model import GPT

# nn.RMSNorm(eps=None) and F.rms_norm(eps=None) use the machine epsilon of float32.
RMS_EPS = torch.finfo(torch.float32).eps
LAYERNORM_EPS = 1e-5  # nn.LayerNorm's default
ROPE_THETA = 10000.0  # model.rotary_tables' base

HF_CLASSES = {"gpt2": "GPT2LMHeadModel", "arcee": "ArceeForCausalLM", "apertus": "ApertusForCausalLM",
              "speedrun": "SpeedrunForCausalLM"}
ACTIVATIONS = {"gelu": "gelu", "relu2": "relu2"}  # ours -> transformers' ACT2FN names (erf GELU, ReLU^2)


def no_native_class(m: ModelConfig) -> str:
    """Why no transformers class computes what `m` computes (one line), or "" when one does."""
    if m.logit_softcap > 0:
        return (f"model.logit_softcap = {m.logit_softcap} has no exact counterpart in transformers "
                "(NanoChat soft-caps but also normalises the embeddings)")
    for option, what in (("smear", "a look-back to the previous token's embedding"),
                         ("bigram", "an embedding of each pair of tokens"),
                         ("value_embeddings", "a second embedding per block, added to its attention values")):
        if getattr(m, option):
            return f"model.{option} = true ({what}) has no counterpart in transformers"
    if m.pos == "learned" and m.norm != "layernorm":
        return "model.norm = 'rmsnorm' with learned positions has no transformers counterpart"
    if m.pos == "learned" and m.qk_norm:
        return "model.qk_norm = true with learned positions has no transformers counterpart"
    if m.pos == "rope" and m.norm != "rmsnorm":
        return "model.norm = 'layernorm' with RoPE has no transformers counterpart"
    if m.pos == "rope" and m.qk_norm and m.bias:
        return "model.bias = true with QK-norm has no transformers counterpart (Apertus has no MLP biases)"
    return ""


def hf_architecture(m: ModelConfig) -> str:
    """The transformers model type that computes exactly what `m` computes, or "speedrun":
    the export's own modeling code (`remote/`), loaded with trust_remote_code."""
    if no_native_class(m):
        return "speedrun"
    if m.pos == "learned":
        return "gpt2"
    return "apertus" if m.qk_norm else "arcee"


# One exported tensor: (its name in the export, our parameter's name or a size, how).
# how: "copy"; "t" transposed (GPT-2's Conv1D stores (in, out)); "q", "k", "v" that
# third of our fused qkv rows; "ones", "zeros" a constant of that size, for a
# parameter our model lacks (a norm's weight, a bias).
Entry = tuple[str, "str | int", str]


def _gpt2_entries(m: ModelConfig, conv1d: bool = True) -> list[Entry]:
    """GPT-2 tensors; `conv1d` False gives GGUF's names and (out, in) layout."""
    C, H = m.n_embd, m.mlp_ratio * m.n_embd
    hf = {"emb": "transformer.wte", "pos": "transformer.wpe", "layer": "transformer.h.{i}.", "ln1": "ln_1",
          "qkv": "attn.c_attn", "o": "attn.c_proj", "ln2": "ln_2", "fc": "mlp.c_fc", "proj": "mlp.c_proj",
          "lnf": "transformer.ln_f", "head": "lm_head"}
    gguf = {"emb": "token_embd", "pos": "position_embd", "layer": "blk.{i}.", "ln1": "attn_norm",
            "qkv": "attn_qkv", "o": "attn_output", "ln2": "ffn_norm", "fc": "ffn_up", "proj": "ffn_down",
            "lnf": "output_norm", "head": "output"}
    n = hf if conv1d else gguf
    linear_how = "t" if conv1d else "copy"

    def layer(prefix: str, ours: str, out: int, weight_how: str) -> list[Entry]:
        bias = (f"{ours}.bias", "copy") if m.bias else (out, "zeros")  # GPT-2 always has biases
        return [(f"{prefix}.weight", f"{ours}.weight", weight_how), (f"{prefix}.bias", *bias)]

    entries = [(f"{n['emb']}.weight", "tok_emb.weight", "copy"), (f"{n['pos']}.weight", "pos_emb.weight", "copy")]
    for i in range(m.n_layer):
        p, ours = n["layer"].format(i=i), f"blocks.{i}."
        entries += layer(p + n["ln1"], ours + "norm1", C, "copy")
        entries += layer(p + n["qkv"], ours + "attn.qkv", 3 * C, linear_how)
        entries += layer(p + n["o"], ours + "attn.proj", C, linear_how)
        entries += layer(p + n["ln2"], ours + "norm2", C, "copy")
        entries += layer(p + n["fc"], ours + "mlp.fc", H, linear_how)
        entries += layer(p + n["proj"], ours + "mlp.proj", C, linear_how)
    entries += layer(n["lnf"], "norm_f", C, "copy")
    if not m.tie_embeddings:
        entries.append((f"{n['head']}.weight", "head.weight", "copy"))
    return entries


LLAMA_NAMES = {  # transformers' Arcee/Apertus names, and llama.cpp's for the same tensors
    "hf": {"emb": "model.embed_tokens", "layer": "model.layers.{i}.", "q": "self_attn.q_proj",
           "k": "self_attn.k_proj", "v": "self_attn.v_proj", "q_norm": "self_attn.q_norm",
           "k_norm": "self_attn.k_norm", "o": "self_attn.o_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
           "norm": "model.norm", "head": "lm_head"},
    "gguf": {"emb": "token_embd", "layer": "blk.{i}.", "q": "attn_q", "k": "attn_k", "v": "attn_v",
             "q_norm": "attn_q_norm", "k_norm": "attn_k_norm", "o": "attn_output", "up": "ffn_up",
             "down": "ffn_down", "norm": "output_norm", "head": "output", "norms": ("attn_norm", "ffn_norm")},
}


def _llama_entries(m: ModelConfig, qk_norm: bool, norms: tuple[str, str], n: dict) -> list[Entry]:
    """Arcee and Apertus: Llama's layout, separate q/k/v, an MLP without a gate."""
    C, D = m.n_embd, m.n_embd // m.n_head
    entries: list[Entry] = [(f"{n['emb']}.weight", "tok_emb.weight", "copy")]
    for i in range(m.n_layer):
        p, ours = n["layer"].format(i=i), f"blocks.{i}."
        entries.append((f"{p}{norms[0]}.weight", C, "ones"))
        for part in "qkv":
            entries.append((f"{p}{n[part]}.weight", ours + "attn.qkv.weight", part))
            if m.bias:
                entries.append((f"{p}{n[part]}.bias", ours + "attn.qkv.bias", part))
        if qk_norm:
            entries += [(f"{p}{n['q_norm']}.weight", D, "ones"), (f"{p}{n['k_norm']}.weight", D, "ones")]
        entries.append((f"{p}{norms[1]}.weight", C, "ones"))
        for theirs, mine in (("o", "attn.proj"), ("up", "mlp.fc"), ("down", "mlp.proj")):
            entries.append((f"{p}{n[theirs]}.weight", f"{ours}{mine}.weight", "copy"))
            if m.bias:
                entries.append((f"{p}{n[theirs]}.bias", f"{ours}{mine}.bias", "copy"))
    entries.append((f"{n['norm']}.weight", C, "ones"))
    if not m.tie_embeddings:
        entries.append((f"{n['head']}.weight", "head.weight", "copy"))
    return entries


def _own_entries(m: ModelConfig) -> list[Entry]:
    """The export's own modeling code: every parameter under our name (a tied head once)."""
    with torch.device("meta"):
        names = list(GPT(m).state_dict())
    return [(name, name, "copy") for name in names if not (m.tie_embeddings and name == "head.weight")]


def tensor_entries(arch: str, m: ModelConfig) -> list[Entry]:
    """The tensors of `arch`: a transformers model type, "speedrun" (our own code) or
    "gguf-" and llama.cpp's architecture."""
    if arch == "gpt2":
        return _gpt2_entries(m)
    if arch == "gguf-gpt2":
        return _gpt2_entries(m, conv1d=False)
    if arch == "speedrun":
        return _own_entries(m)
    if arch in ("gguf-arcee", "gguf-apertus"):
        return _llama_entries(m, arch == "gguf-apertus", LLAMA_NAMES["gguf"]["norms"], LLAMA_NAMES["gguf"])
    if arch == "arcee":
        return _llama_entries(m, False, ("input_layernorm", "post_attention_layernorm"), LLAMA_NAMES["hf"])
    return _llama_entries(m, True, ("attention_layernorm", "feedforward_layernorm"), LLAMA_NAMES["hf"])


def export_tensors(state: dict, entries: list[Entry]) -> dict[str, torch.Tensor]:
    """Our state dict as the export's tensors (fp32, contiguous, none shared)."""
    out = {}
    for name, source, how in entries:
        if how in ("ones", "zeros"):
            t = torch.ones(source) if how == "ones" else torch.zeros(source)
        else:
            t = state[source]
            if how == "t":
                t = t.t()
            elif how in ("q", "k", "v"):
                t = t.chunk(3)["qkv".index(how)]
        out[name] = t.detach().float().cpu().contiguous().clone()
    return out


def import_tensors(tensors: dict, entries: list[Entry], tie: bool) -> dict[str, torch.Tensor]:
    """The inverse of export_tensors: an export's tensors as our state dict.

    A constant (norm weight, bias) that no longer holds its value, say after
    fine-tuning in another tool, has no place in our model: refused, not dropped."""
    state, qkv = {}, {}
    for name, source, how in entries:
        if name not in tensors:
            raise ConfigError(f"the export lacks the tensor {name}; export the run again")
        t = tensors[name]
        if how in ("ones", "zeros"):
            if not torch.equal(t, torch.full_like(t, 1.0 if how == "ones" else 0.0)):
                raise ConfigError(f"{name} is no longer all {how}; speedrun's model has no such parameter, "
                                  "so this model cannot be loaded back into it")
        elif how in ("q", "k", "v"):
            qkv.setdefault(source, {})[how] = t
        else:
            state[source] = t.t() if how == "t" else t
    for source, parts in qkv.items():
        state[source] = torch.cat([parts["q"], parts["k"], parts["v"]])
    if tie:
        state["head.weight"] = state["tok_emb.weight"]
    return {k: v.contiguous() for k, v in state.items()}


def is_chat(tok) -> bool:
    """A chat model's tokenizer: it has every chat token, so it gets a chat template."""
    return all(s in tok.special_ids for s in CHAT_SPECIAL_TOKENS)


def special_tokens(tok) -> dict[str, str]:
    """bos/eos/pad for the tokenizer files. A text model starts a document after its
    end-of-document token (as `speedrun sample` does with no prompt); a chat model
    starts with <|bos|> and ends its turn with <|assistant_end|>."""
    if is_chat(tok):
        return {"bos_token": BOS, "eos_token": ASSISTANT_END, "pad_token": tok.eot}
    return {"bos_token": tok.eot, "eos_token": tok.eot, "pad_token": tok.eot}
