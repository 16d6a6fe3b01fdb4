"""The export folder: `speedrun export` writes one, checks it against our model, and
loads one back. Every export folder holds `speedrun.json` (the run's config and
tokenizer) beside the format's own files, so speedrun loads it back into its own
model (`speedrun sample OUT`, `speedrun chat OUT`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ..config import Config, ConfigError, config_from_dict, to_dict
from ..model import GPT
from ..rundir import RunDir, load_run_model, write_json
from ..tokenizer import load_tokenizer
from .mapping import (
    HF_CLASSES,
    hf_architecture,
    import_tensors,
    no_native_class,
    tensor_entries,
)
from .to_gguf import CAVEATS, gguf_architecture, read_gguf, write_gguf
from .to_hf import write_hf

FORMAT = "speedrun-export-1"
META_FILE = "speedrun.json"
PARITY_TOLERANCE = 1e-4


def export_run(run_dir, out, to: str = "hf") -> dict:
    """Export a run directory's model (`RunDir.load_model_weights`: its last checkpoint, or its
    best for a run that stops on val) to the new folder `out`; returns what was written and,
    when transformers is installed, the largest difference between its logits and ours (`max_logit_diff`, on random ids of a full block)."""
    model, tok, cfg = load_run_model(str(run_dir))
    if to == "hf":
        arch = hf_architecture(cfg.model)
    elif to == "gguf":
        arch = gguf_architecture(cfg.model, tok)
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
        write_gguf(model, tok, cfg, out / "model.gguf", arch)
    write_json(out / META_FILE, {"format": FORMAT, "to": to, "architecture": arch, "config": to_dict(cfg),
                                 "tokenizer": json.loads(tok.to_json())})
    run = RunDir(Path(run_dir))
    summary = run.read_summary() if run.has_summary() else {}
    result = {"out": str(out), "architecture": describe(arch, cfg.model),
              "custom_code": arch == "speedrun", "max_logit_diff": max_logit_diff(model, out, to)}
    (out / "README.md").write_text(model_card(cfg, summary, result, arch), encoding="utf-8")
    return result


def describe(arch: str, m) -> str:
    """What the export is, in a few words: the class, or the custom code and why."""
    if arch.startswith("gguf-"):
        return f"GGUF {arch.removeprefix('gguf-')}"
    if arch == "speedrun":
        return f"{HF_CLASSES[arch]}, custom code (trust_remote_code=True): {no_native_class(m)}"
    return HF_CLASSES[arch]


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
        theirs = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32,
                                                      trust_remote_code=model_type(out) == "speedrun").eval()
    with torch.no_grad():
        logits = theirs(ids)
        logits = logits if to == "gguf" else logits.logits
        return (logits - model.eval()(ids)).abs().max().item()


def model_type(out: Path) -> str:
    return json.loads((Path(out) / "config.json").read_text(encoding="utf-8"))["model_type"]


def model_card(cfg: Config, summary: dict, result: dict, arch: str) -> str:
    """README.md of the export: what the model is, how it was trained, how to load it."""
    to = "gguf" if arch.startswith("gguf-") else "hf"
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
        remote = ", trust_remote_code=True" if result["custom_code"] else ""
        load = ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
                f"tokenizer = AutoTokenizer.from_pretrained({result['out']!r}{remote})\n"
                f"model = AutoModelForCausalLM.from_pretrained({result['out']!r}{remote})\n```\n")
        if remote:
            load += ("\nNo transformers class computes this model exactly, so the folder carries its own "
                     "code (`modeling_speedrun.py`, `configuration_speedrun.py`: torch and transformers only).\n")
        check = ("" if diff is None else
                 f"Checked at export: the largest difference between these logits in transformers and "
                 f"speedrun's own model was {diff:.1e} on a full context of random tokens.\n")
    else:
        load = (f"`model.gguf` is llama.cpp's `{result['architecture'].removeprefix('GGUF ')}` architecture in "
                "float32 (`llama-cli -m model.gguf`).\n")
        check = f"Read back at export, the file gives speedrun's logits to within {diff:.1e}. {CAVEATS[arch]}\n"
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
        tensors = read_gguf(path / "model.gguf", meta["architecture"], cfg.model)
    else:
        from safetensors.torch import load_file

        tensors = load_file(str(path / "model.safetensors"))
    state = import_tensors(tensors, tensor_entries(meta["architecture"], cfg.model), cfg.model.tie_embeddings)
    return cfg, tok, state


def load_export(path):
    """(model, tokenizer, config) from an export folder, as `rundir.load_run_model` gives them
    for a run directory: the model on the CPU in fp32, as exported (the config says so)."""
    cfg, tok, state = read_export(path)
    model = GPT(cfg.model)
    model.load_state_dict(state)
    return model.eval(), tok, dataclasses.replace(cfg, dtype="float32")
