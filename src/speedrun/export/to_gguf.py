"""llama.cpp's GGUF file, for GPT-2 style models: the `gpt2` architecture in float32,
with its byte-level BPE vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import Config, ConfigError, ModelConfig
from ..model import GPT
from .mapping import HF_CLASSES, LAYERNORM_EPS, export_tensors, hf_architecture, special_tokens, tensor_entries


def gguf_check(m: ModelConfig, tok) -> None:
    """GGUF export covers llama.cpp's `gpt2` architecture: GPT-2 style blocks with
    GELU, and tokenizers its byte-level BPE reads the same way."""
    arch = hf_architecture(m)
    if arch != "gpt2":
        raise ConfigError(f"GGUF export covers GPT-2 style models (model.pos='learned', model.norm='layernorm'); "
                          f"this one maps to {HF_CLASSES[arch]}: export it with --to hf")
    if m.mlp != "gelu":
        raise ConfigError("model.mlp = 'relu2' has no counterpart in llama.cpp's gpt2 architecture; "
                          "train with model.mlp='gelu' or export with --to hf")
    data = json.loads(tok.to_json())
    if data["kind"] == "char" and any(ord(c) > 127 for c in tok.chars):
        raise ConfigError("GGUF export of a character tokenizer needs an ASCII alphabet (llama.cpp's byte-level "
                          "BPE would split the others into bytes); export with --to hf")
    if data["kind"] == "bpe" and data["tokenizer"].get("pre_tokenizer", {}).get("type") != "ByteLevel":
        raise ConfigError("GGUF export needs GPT-2's byte-level pre-tokenizer; this BPE tokenizer splits digits "
                          "too, which llama.cpp's gpt2 tokenizer does not: export with --to hf")


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


def write_gguf(model: GPT, tok, cfg: Config, path: Path) -> None:
    gguf = _gguf()
    m = cfg.model
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_name(cfg.recipe or cfg.task)
    writer.add_context_length(m.block_size)
    writer.add_embedding_length(m.n_embd)
    writer.add_feed_forward_length(m.mlp_ratio * m.n_embd)
    writer.add_block_count(m.n_layer)
    writer.add_head_count(m.n_head)
    writer.add_layer_norm_eps(LAYERNORM_EPS)
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
    for name, t in export_tensors(model.state_dict(), tensor_entries("gguf-gpt2", m)).items():
        writer.add_tensor(name, t.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def read_gguf(path: Path) -> dict[str, torch.Tensor]:
    return {t.name: torch.from_numpy(t.data.copy()) for t in _gguf().GGUFReader(str(path)).tensors}


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ConfigError("GGUF files need the gguf package: pip install 'speedrun[export]'") from None
    return gguf
