"""Export a trained model to formats other tools load: a transformers folder, or GGUF.

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

What has no exact counterpart is refused with the setting that avoids it:
NanoChatForCausalLM has our block and a logit soft-cap but also normalises the
token embeddings before the first layer, which ours does not, so a soft-capped
model (`model.logit_softcap`) maps to no class; nor do LayerNorm with RoPE or
RMSNorm with learned positions.

`--to gguf` writes llama.cpp's `gpt2` architecture for GPT-2 style models.
Every export folder also holds `speedrun.json` (the run's config and
tokenizer), so speedrun loads it back into its own model (`speedrun sample
OUT`, `speedrun chat OUT`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import Config, ConfigError, ModelConfig, config_from_dict, to_dict
from .model import GPT
from .tokenizer import load_tokenizer

FORMAT = "speedrun-export-1"
META_FILE = "speedrun.json"
# nn.RMSNorm(eps=None) and F.rms_norm(eps=None) use the machine epsilon of float32.
RMS_EPS = torch.finfo(torch.float32).eps
LAYERNORM_EPS = 1e-5  # nn.LayerNorm's default
ROPE_THETA = 10000.0  # model.rotary_tables' base
PARITY_TOLERANCE = 1e-4

HF_CLASSES = {"gpt2": "GPT2LMHeadModel", "arcee": "ArceeForCausalLM", "apertus": "ApertusForCausalLM"}
ACTIVATIONS = {"gelu": "gelu", "relu2": "relu2"}  # ours -> transformers' ACT2FN names (erf GELU, ReLU^2)


def hf_architecture(m: ModelConfig) -> str:
    """The transformers model type that computes exactly what `m` computes, or a
    one-line ConfigError naming the setting that has no counterpart."""
    if m.logit_softcap > 0:
        raise ConfigError(f"model.logit_softcap = {m.logit_softcap} has no exact counterpart in transformers "
                          "(NanoChat soft-caps but also normalises the embeddings); train with model.logit_softcap=0")
    if m.pos == "learned":
        if m.norm != "layernorm":
            raise ConfigError("model.norm = 'rmsnorm' with learned positions has no transformers counterpart; "
                              "train with model.norm='layernorm' (GPT-2) or model.pos='rope'")
        if m.qk_norm:
            raise ConfigError("model.qk_norm = true with learned positions has no transformers counterpart; "
                              "train with model.qk_norm=false or model.pos='rope'")
        return "gpt2"
    if m.norm != "rmsnorm":
        raise ConfigError("model.norm = 'layernorm' with RoPE has no transformers counterpart; "
                          "train with model.norm='rmsnorm' or model.pos='learned' (GPT-2)")
    if not m.qk_norm:
        return "arcee"
    if m.bias:
        raise ConfigError("model.bias = true with QK-norm has no transformers counterpart (Apertus has no MLP "
                          "biases); train with model.bias=false")
    return "apertus"


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


def _llama_entries(m: ModelConfig, qk_norm: bool, norms: tuple[str, str]) -> list[Entry]:
    """Arcee and Apertus: Llama's names, separate q/k/v, an MLP without a gate."""
    C, D = m.n_embd, m.n_embd // m.n_head
    entries: list[Entry] = [("model.embed_tokens.weight", "tok_emb.weight", "copy")]
    for i in range(m.n_layer):
        p, ours = f"model.layers.{i}.", f"blocks.{i}."
        entries.append((f"{p}{norms[0]}.weight", C, "ones"))
        for part in "qkv":
            entries.append((f"{p}self_attn.{part}_proj.weight", ours + "attn.qkv.weight", part))
            if m.bias:
                entries.append((f"{p}self_attn.{part}_proj.bias", ours + "attn.qkv.bias", part))
        if qk_norm:
            entries += [(f"{p}self_attn.q_norm.weight", D, "ones"), (f"{p}self_attn.k_norm.weight", D, "ones")]
        entries.append((f"{p}{norms[1]}.weight", C, "ones"))
        for theirs, mine in (("self_attn.o_proj", "attn.proj"), ("mlp.up_proj", "mlp.fc"),
                             ("mlp.down_proj", "mlp.proj")):
            entries.append((f"{p}{theirs}.weight", f"{ours}{mine}.weight", "copy"))
            if m.bias:
                entries.append((f"{p}{theirs}.bias", f"{ours}{mine}.bias", "copy"))
    entries.append(("model.norm.weight", C, "ones"))
    if not m.tie_embeddings:
        entries.append(("lm_head.weight", "head.weight", "copy"))
    return entries


def tensor_entries(arch: str, m: ModelConfig) -> list[Entry]:
    if arch == "gpt2":
        return _gpt2_entries(m)
    if arch == "gguf-gpt2":
        return _gpt2_entries(m, conv1d=False)
    if arch == "arcee":
        return _llama_entries(m, False, ("input_layernorm", "post_attention_layernorm"))
    return _llama_entries(m, True, ("attention_layernorm", "feedforward_layernorm"))


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


def hf_config(arch: str, m: ModelConfig, special: dict) -> dict:
    """config.json for `arch`; `special` holds bos/eos/pad token ids."""
    common = {"architectures": [HF_CLASSES[arch]], "model_type": arch, "vocab_size": m.vocab_size,
              "tie_word_embeddings": m.tie_embeddings, "dtype": "float32", "use_cache": True, **special}
    if arch == "gpt2":
        return {**common, "n_positions": m.block_size, "n_embd": m.n_embd, "n_layer": m.n_layer,
                "n_head": m.n_head, "n_inner": m.mlp_ratio * m.n_embd, "activation_function": ACTIVATIONS[m.mlp],
                "layer_norm_epsilon": LAYERNORM_EPS, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    llama = {**common, "hidden_size": m.n_embd, "intermediate_size": m.mlp_ratio * m.n_embd,
             "num_hidden_layers": m.n_layer, "num_attention_heads": m.n_head, "num_key_value_heads": m.n_head,
             "hidden_act": ACTIVATIONS[m.mlp], "max_position_embeddings": m.block_size, "rms_norm_eps": RMS_EPS,
             "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
             "attention_bias": m.bias, "attention_dropout": 0.0}
    if arch == "arcee":
        llama.update(mlp_bias=m.bias, head_dim=m.n_embd // m.n_head)
    return llama


def hf_tokenizer(tok):
    """Our tokenizer as a `tokenizers.Tokenizer` giving the same ids. A BPE
    tokenizer already is one; a character tokenizer becomes a BPE model whose
    vocabulary is the alphabet and which has no merges (one token per character),
    with its special symbols as added tokens at their ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    data = json.loads(tok.to_json())
    if data["kind"] == "bpe":
        return Tokenizer.from_str(json.dumps(data["tokenizer"]))
    hf = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(tok.chars)}, merges=[]))
    hf.decoder = decoders.Fuse()  # join the characters, with no space between them
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False)
                           for s in sorted(tok.special_ids, key=tok.special_ids.get)])
    wrong = {s: hf.token_to_id(s) for s, i in tok.special_ids.items() if hf.token_to_id(s) != i}
    if wrong or hf.get_vocab_size() != tok.vocab_size:
        raise AssertionError(f"character tokenizer export gave other ids for {wrong}")
    return hf


def chat_template_jinja() -> str:
    """A Jinja chat template rendering the text `chat.template.ChatTemplate` encodes:
    `apply_chat_template` then splits it at the special tokens and encodes each piece
    alone, as `render` does. Two differences remain: two text parts in a row are one
    piece here, and special-token text inside a message is read as the token."""
    from .chat import template as t

    def raise_(message: str) -> str:
        return "{{ raise_exception(" + message + ") }}"

    part = ("{%- if part.type == 'text' -%}{{ part.text }}"
            f"{{%- elif part.type == 'tool_call' -%}}{{{{ '{t.TOOL_START}' + part.text + '{t.TOOL_END}' }}}}"
            f"{{%- elif part.type == 'tool_output' -%}}{{{{ '{t.OUTPUT_START}' + part.text + '{t.OUTPUT_END}' }}}}"
            "{%- else -%}" + raise_("'unknown part type ' ~ part.type ~ '; use text, tool_call or tool_output'")
            + "{%- endif -%}")
    return ("{{- '" + t.BOS + "' -}}{%- for message in messages -%}"
            "{%- if message.role == 'system' -%}"
            "{%- if not loop.first -%}" + raise_("'a system message may only come first'") + "{%- endif -%}"
            f"{{{{ '{t.SYSTEM_START}' + message.content + '{t.SYSTEM_END}' }}}}"
            "{%- elif message.role == 'user' -%}"
            f"{{{{ '{t.USER_START}' + message.content + '{t.USER_END}' }}}}"
            "{%- elif message.role == 'assistant' -%}"
            f"{{{{ '{t.ASSISTANT_START}' }}}}"
            "{%- if message.content is string -%}{{ message.content }}"
            "{%- else -%}{%- for part in message.content -%}" + part + "{%- endfor -%}{%- endif -%}"
            f"{{{{ '{t.ASSISTANT_END}' }}}}"
            "{%- else -%}" + raise_("'unknown role ' ~ message.role ~ '; use system, user or assistant'")
            + "{%- endif -%}{%- endfor -%}"
            f"{{%- if add_generation_prompt -%}}{{{{ '{t.ASSISTANT_START}' }}}}{{%- endif -%}}")


def is_chat(tok) -> bool:
    from .chat.template import CHAT_SPECIAL_TOKENS

    return all(s in tok.special_ids for s in CHAT_SPECIAL_TOKENS)


def special_tokens(tok) -> dict[str, str]:
    """bos/eos/pad for the tokenizer files. A text model starts a document after its
    end-of-document token (as `speedrun sample` does with no prompt); a chat model
    starts with <|bos|> and ends its turn with <|assistant_end|>."""
    if is_chat(tok):
        from .chat.template import ASSISTANT_END, BOS

        return {"bos_token": BOS, "eos_token": ASSISTANT_END, "pad_token": tok.eot}
    return {"bos_token": tok.eot, "eos_token": tok.eot, "pad_token": tok.eot}


def generation_config(tok, block_size: int) -> dict:
    """The defaults of `speedrun chat` (sampled) or `speedrun sample` (greedy); a chat
    model stops at the end of its turn or of a document."""
    names = special_tokens(tok)
    eos = [tok.token_id(names["eos_token"])] + ([tok.eot_id] if is_chat(tok) else [])
    sampling = {"do_sample": True, "temperature": 0.6, "top_k": 50} if is_chat(tok) else {"do_sample": False}
    return {"bos_token_id": tok.token_id(names["bos_token"]), "eos_token_id": eos if len(eos) > 1 else eos[0],
            "pad_token_id": tok.eot_id, "max_length": block_size, **sampling}


def write_hf_tokenizer(tok, out: Path, block_size: int) -> None:
    hf_tokenizer(tok).save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": block_size,
              "clean_up_tokenization_spaces": False, "add_bos_token": False, "add_eos_token": False,
              **special_tokens(tok)}
    _write_json(out / "tokenizer_config.json", config)
    if is_chat(tok):
        (out / "chat_template.jinja").write_text(chat_template_jinja(), encoding="utf-8")


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


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


def write_hf(model: GPT, tok, cfg: Config, out: Path) -> None:
    from safetensors.torch import save_file

    arch = hf_architecture(cfg.model)
    tensors = export_tensors(model.state_dict(), tensor_entries(arch, cfg.model))
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    gen = generation_config(tok, cfg.model.block_size)
    special = {k: gen[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    _write_json(out / "config.json", hf_config(arch, cfg.model, special))
    _write_json(out / "generation_config.json", gen)
    write_hf_tokenizer(tok, out, cfg.model.block_size)


def export_run(run_dir, out, to: str = "hf") -> dict:
    """Export a run directory's last checkpoint to the new folder `out`; returns
    what was written and, when transformers is installed, the largest difference
    between its logits and ours (`max_logit_diff`, on random ids of a full block)."""
    from .rundir import RunDir, load_run_model

    model, tok, cfg, _ = load_run_model(str(run_dir), "cpu")
    if to == "hf":
        arch = hf_architecture(cfg.model)
    elif to == "gguf":
        gguf_check(cfg.model, tok)
        arch = "gguf-gpt2"
    else:
        raise ConfigError(f"unknown export format {to!r}; use hf or gguf")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and is not empty; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    model.float()
    if to == "hf":
        write_hf(model, tok, cfg, out)
    else:
        write_gguf(model, tok, cfg, out / "model.gguf")
    _write_json(out / META_FILE, {"format": FORMAT, "to": to, "architecture": arch, "config": to_dict(cfg),
                                  "tokenizer": json.loads(tok.to_json())})
    run = RunDir(Path(run_dir))
    summary = run.read_summary() if (run.path / "summary.json").is_file() else {}
    result = {"out": str(out), "architecture": "GGUF gpt2" if to == "gguf" else HF_CLASSES[arch],
              "max_logit_diff": max_logit_diff(model, out, to)}
    (out / "README.md").write_text(model_card(cfg, summary, result, to), encoding="utf-8")
    return result


def max_logit_diff(model: GPT, out: Path, to: str = "hf", seed: int = 0) -> float | None:
    """Largest |logit difference| between the export and our model on two random
    sequences of a full block. A transformers folder is loaded by transformers
    (None if it is not installed); a GGUF file is read back into our model, as
    transformers' GGUF loader takes GPT-2's context length from the wrong key."""
    m = model.cfg
    ids = torch.randint(m.vocab_size, (2, m.block_size), generator=torch.Generator().manual_seed(seed))
    if to == "gguf":
        theirs = load_export(out)[0]
    else:
        try:
            from transformers import AutoModelForCausalLM
        except ImportError:
            return None
        theirs = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = theirs(ids)
        logits = logits if to == "gguf" else logits.logits
        return (logits - model.eval()(ids)).abs().max().item()


def model_card(cfg: Config, summary: dict, result: dict, to: str) -> str:
    """README.md of the export: what the model is, how it was trained, how to load it."""
    m, name = cfg.model, cfg.recipe or cfg.task
    source = getattr(cfg.data, "source", "") or getattr(cfg.data, "url", "")
    data = {"addition": "3-digit addition problems, generated", "chat": "synthetic chat tasks"}.get(cfg.task, "")
    rows = [("recipe", f"`{name}`" + (f": {cfg.description}" if cfg.description else "")),
            ("task", cfg.task), ("data", source or data or "-"),
            ("model", f"{m.n_layer} x {m.n_embd} (layers x width), {m.n_head} heads, context {m.block_size}, "
                      f"vocabulary {m.vocab_size}; exported as {result['architecture']}")]
    for key, label in (("params", "parameters"), ("steps", "steps"), ("tokens", "training tokens"),
                       ("train_seconds", "training seconds"), ("device", "device"), ("dtype", "dtype"),
                       ("torch_version", "torch"), ("git_commit", "speedrun commit")):
        if summary.get(key) is not None:
            value = summary[key]
            rows.append((label, f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"
                         if isinstance(value, int) else str(value)))
    hardware = summary.get("hardware") or {}
    if hardware:
        rows.append(("hardware", ", ".join(str(hardware[k]) for k in ("cpu", "gpu") if hardware.get(k))))
    for key, value in (summary.get("metrics") or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append((key, f"{value:.4f}" if isinstance(value, float) else str(value)))
    diff = result["max_logit_diff"]
    if to == "hf":
        load = ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
                f"tokenizer = AutoTokenizer.from_pretrained({result['out']!r})\n"
                f"model = AutoModelForCausalLM.from_pretrained({result['out']!r})\n```\n")
        check = ("" if diff is None else
                 f"Checked at export: the largest difference between these logits in transformers and "
                 f"speedrun's own model was {diff:.1e} on a full context of random tokens.\n")
    else:
        load = "`model.gguf` is llama.cpp's `gpt2` architecture in float32 (`llama-cli -m model.gguf`).\n"
        check = (f"Read back at export, the file gives speedrun's logits to within {diff:.1e}. llama.cpp computes "
                 "GPT-2's GELU with the tanh approximation where speedrun uses the exact one, so its logits "
                 "differ slightly from these.\n")
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (f"---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags: [speedrun]\n---\n\n"
            f"# {name}\n\nA small GPT trained from scratch with speedrun.\n\n| | |\n| --- | --- |\n{table}\n\n"
            f"## Load it\n\n{load}\n{check}\n"
            f"`speedrun sample {result['out']}` and `speedrun chat {result['out']}` load this folder into "
            "speedrun's own model.\n")


def is_export(path) -> bool:
    return (Path(path) / META_FILE).is_file()


def read_export(path) -> tuple[Config, object, dict]:
    """(config, tokenizer, our state dict) from an export folder."""
    path = Path(path)
    meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{path / META_FILE} is not a speedrun export (format {meta.get('format')!r})")
    cfg = config_from_dict(meta["config"])
    tok = load_tokenizer(json.dumps(meta["tokenizer"]))
    if meta["to"] == "gguf":
        tensors = read_gguf(path / "model.gguf")
    else:
        from safetensors.torch import load_file

        tensors = load_file(str(path / "model.safetensors"))
    state = import_tensors(tensors, tensor_entries(meta["architecture"], cfg.model), cfg.model.tie_embeddings)
    return cfg, tok, state


def load_export(path, device: str = "cpu"):
    """(model, tokenizer, config, runtime) from an export folder, as
    `rundir.load_run_model` gives them for a run directory; fp32, as exported."""
    from .device import setup_runtime

    cfg, tok, state = read_export(path)
    rt = setup_runtime(device, "float32")
    model = GPT(cfg.model)
    model.load_state_dict(state)
    return model.to(rt.device).eval(), tok, cfg, rt


def load_model(path, device: str = "cpu"):
    """(model, tokenizer, config, runtime) of a run directory or of an export folder."""
    from .rundir import load_run_model

    return (load_export if is_export(path) else load_run_model)(str(path), device)
