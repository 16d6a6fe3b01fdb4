"""llama.cpp's GGUF file in float32, with its byte-level BPE vocabulary, for three of its
architectures: `gpt2` (learned positions, LayerNorm, GELU), `arcee` (RoPE, RMSNorm, ReLU^2)
and `apertus` (the same with QK-norm; its xIELU activation with alpha_p = 1, alpha_n = 0,
beta = 0 is exactly ReLU^2). llama.cpp's `arcee` rotates neighbouring pairs of each head
where ours rotates (first half, second half), so its query and key rows are interleaved
here and put back on reading; `apertus` rotates as ours does."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import Config, ConfigError, ModelConfig
from ..model import GPT
from .mapping import (
    LAYERNORM_EPS,
    RMS_EPS,
    ROPE_THETA,
    export_tensors,
    hf_architecture,
    no_native_class,
    special_tokens,
    tensor_entries,
)

CAVEATS = {
    "gguf-gpt2": "llama.cpp computes GPT-2's GELU with the tanh approximation where speedrun uses the exact one, "
                 "so its logits differ slightly from these.",
    "gguf-arcee": "llama.cpp computes the same functions (ReLU^2, RoPE on interleaved pairs of the permuted "
                  "rows); its logits differ from these by float rounding only.",
    "gguf-apertus": "llama.cpp's xIELU with these constants is ReLU^2; its logits differ from these by float "
                    "rounding only.",
}


def gguf_architecture(m: ModelConfig, tok) -> str:
    """The llama.cpp architecture ("gguf-" and its name) that computes what `m` computes,
    or a one-line ConfigError naming what has no counterpart and what to do."""
    reason = no_native_class(m)
    if reason:
        raise ConfigError(f"GGUF export: {reason}, nor in llama.cpp; export with --to hf (custom code)")
    arch = {"gpt2": "gguf-gpt2", "arcee": "gguf-arcee", "apertus": "gguf-apertus"}[hf_architecture(m)]
    wanted = "gelu" if arch == "gguf-gpt2" else "relu2"
    if m.mlp != wanted:
        raise ConfigError(f"model.mlp = {m.mlp!r} has no counterpart in llama.cpp's {arch.removeprefix('gguf-')} "
                          f"architecture; train with model.mlp={wanted!r} or export with --to hf")
    if m.bias and arch != "gguf-gpt2":
        raise ConfigError("model.bias = true with RoPE has no counterpart in llama.cpp's arcee architecture; "
                          "train with model.bias=false or export with --to hf")
    data = json.loads(tok.to_json())
    if data["kind"] == "char" and any(ord(c) > 127 for c in tok.chars):
        raise ConfigError("GGUF export of a character tokenizer needs an ASCII alphabet (llama.cpp's byte-level "
                          "BPE would split the others into bytes); export with --to hf")
    if data["kind"] == "bpe" and data["tokenizer"].get("pre_tokenizer", {}).get("type") != "ByteLevel":
        raise ConfigError("GGUF export needs GPT-2's byte-level pre-tokenizer; this BPE tokenizer splits digits "
                          "too, which llama.cpp's gpt2 tokenizer does not: export with --to hf")
    return arch


def interleave_pairs(w: torch.Tensor, n_head: int, inverse: bool = False) -> torch.Tensor:
    """Query or key rows (and biases) from (first half, second half) of each head to
    neighbouring pairs, as llama.cpp's `arcee` rotates them; `inverse` puts them back."""
    D = w.shape[0] // n_head
    shape = (n_head, D // 2, 2) if inverse else (n_head, 2, D // 2)
    return w.reshape(*shape, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape).contiguous()


def _rotated(name: str) -> bool:
    return name.endswith(("attn_q.weight", "attn_k.weight"))


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable bytes stand for themselves, the others
    for the characters from U+0100 on, in byte order."""
    keep = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    extra = iter(range(256, 512))
    return {b: chr(b) if b in keep else chr(next(extra)) for b in range(256)}


def gguf_vocab(tok) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, token types, merges) for llama.cpp's byte-level BPE."""
    import gguf

    data = json.loads(tok.to_json())
    control = set(tok.special_ids.values())
    if data["kind"] == "char":
        chars = _byte_chars()
        tokens = [chars[ord(c)] if i < len(tok.chars) else c for i, c in enumerate(tok.vocab)]
        merges = []
    else:
        spec = data["tokenizer"]
        by_id = {i: t for t, i in spec["model"]["vocab"].items()}
        by_id.update({a["id"]: a["content"] for a in spec["added_tokens"]})
        tokens = [by_id[i] for i in range(tok.vocab_size)]
        merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    types = [int(gguf.TokenType.CONTROL if i in control and i >= len(getattr(tok, "chars", ())) else
                 gguf.TokenType.NORMAL) for i in range(len(tokens))]
    return tokens, types, merges


def write_gguf(model: GPT, tok, cfg: Config, path: Path, arch: str) -> None:
    gguf = _gguf()
    m, name = cfg.model, arch.removeprefix("gguf-")
    writer = gguf.GGUFWriter(str(path), name)
    writer.add_name(cfg.recipe or cfg.task)
    writer.add_context_length(m.block_size)
    writer.add_embedding_length(m.n_embd)
    writer.add_feed_forward_length(m.mlp_ratio * m.n_embd)
    writer.add_block_count(m.n_layer)
    writer.add_head_count(m.n_head)
    if arch == "gguf-gpt2":
        writer.add_layer_norm_eps(LAYERNORM_EPS)
    else:
        writer.add_head_count_kv(m.n_head)
        writer.add_layer_norm_rms_eps(RMS_EPS)
        writer.add_rope_freq_base(ROPE_THETA)
        writer.add_rope_dimension_count(m.n_embd // m.n_head)
        writer.add_vocab_size(m.vocab_size)
    if arch == "gguf-apertus":  # xIELU(x) = alpha_p x^2 + beta x for x > 0, alpha_n (...) + beta x below: ReLU^2
        writer.add_xielu_alpha_p([1.0] * m.n_layer)
        writer.add_xielu_alpha_n([0.0] * m.n_layer)
        writer.add_xielu_beta([0.0] * m.n_layer)
        writer.add_xielu_eps([-1e-6] * m.n_layer)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    tokens, types, merges = gguf_vocab(tok)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    names = special_tokens(tok)
    writer.add_bos_token_id(tok.token_id(names["bos_token"]))
    writer.add_eos_token_id(tok.token_id(names["eos_token"]))
    writer.add_add_bos_token(False)
    for tensor_name, t in export_tensors(model.state_dict(), tensor_entries(arch, m)).items():
        if arch == "gguf-arcee" and _rotated(tensor_name):
            t = interleave_pairs(t, m.n_head)
        writer.add_tensor(tensor_name, t.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def read_gguf(path: Path, arch: str, m: ModelConfig) -> dict[str, torch.Tensor]:
    """The file's tensors as `export_tensors` gave them (arcee's rows put back)."""
    tensors = {t.name: torch.from_numpy(t.data.copy()) for t in _gguf().GGUFReader(str(path)).tensors}
    if arch == "gguf-arcee":
        tensors = {k: interleave_pairs(t, m.n_head, inverse=True) if _rotated(k) else t for k, t in tensors.items()}
    return tensors


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ConfigError("GGUF files need the gguf package: pip install 'speedrun[export]'") from None
    return gguf
