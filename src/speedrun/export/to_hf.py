"""The transformers folder: safetensors weights, config.json, generation_config.json,
the tokenizer files and, for a chat model, its chat template."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..chat.engine import CHAT_TEMPERATURE, CHAT_TOP_K
from ..config import Config, ModelConfig
from ..model import GPT
from ..rundir import write_json
from . import remote
from .mapping import (
    ACTIVATIONS,
    HF_CLASSES,
    LAYERNORM_EPS,
    RMS_EPS,
    ROPE_THETA,
    export_tensors,
    hf_architecture,
    is_chat,
    special_tokens,
    tensor_entries,
)


def hf_config(arch: str, m: ModelConfig, special: dict) -> dict:
    """config.json for `arch`; `special` holds bos/eos/pad token ids."""
    common = {"architectures": [HF_CLASSES[arch]], "model_type": arch, "vocab_size": m.vocab_size,
              "tie_word_embeddings": m.tie_embeddings, "dtype": "float32", "use_cache": True, **special}
    if arch == "speedrun":  # the fields of remote/configuration_speedrun.py
        auto = {"AutoConfig": "configuration_speedrun.SpeedrunConfig",
                "AutoModelForCausalLM": "modeling_speedrun.SpeedrunForCausalLM"}
        fields = ("n_layer", "n_head", "n_embd", "block_size", "mlp_ratio", "pos", "norm", "qk_norm", "mlp", "bias",
                  "smear", "bigram", "value_embeddings", "logit_softcap")
        return {**common, "auto_map": auto, **{f: getattr(m, f) for f in fields}, "rope_theta": ROPE_THETA}
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
    from ..chat import template as t

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


def generation_config(tok, block_size: int) -> dict:
    """The defaults of `speedrun chat` (sampled) or `speedrun sample` (greedy); a chat
    model stops at the end of its turn or of a document."""
    names = special_tokens(tok)
    eos = [tok.token_id(names["eos_token"])] + ([tok.eot_id] if is_chat(tok) else [])
    sampling = ({"do_sample": True, "temperature": CHAT_TEMPERATURE, "top_k": CHAT_TOP_K} if is_chat(tok)
                else {"do_sample": False})
    return {"bos_token_id": tok.token_id(names["bos_token"]), "eos_token_id": eos if len(eos) > 1 else eos[0],
            "pad_token_id": tok.eot_id, "max_length": block_size, **sampling}


def write_hf_tokenizer(tok, out: Path, block_size: int) -> None:
    hf_tokenizer(tok).save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": block_size,
              "clean_up_tokenization_spaces": False, "add_bos_token": False, "add_eos_token": False,
              **special_tokens(tok)}
    write_json(out / "tokenizer_config.json", config)
    if is_chat(tok):
        (out / "chat_template.jinja").write_text(chat_template_jinja(), encoding="utf-8")


def write_hf(model: GPT, tok, cfg: Config, out: Path) -> None:
    from safetensors.torch import save_file

    arch = hf_architecture(cfg.model)
    tensors = export_tensors(model.state_dict(), tensor_entries(arch, cfg.model))
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    if arch == "speedrun":
        for name in remote.FILES:
            shutil.copyfile(remote.HERE / name, out / name)
    gen = generation_config(tok, cfg.model.block_size)
    special = {k: gen[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    write_json(out / "config.json", hf_config(arch, cfg.model, special))
    write_json(out / "generation_config.json", gen)
    write_hf_tokenizer(tok, out, cfg.model.block_size)
