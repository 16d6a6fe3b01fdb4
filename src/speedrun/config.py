"""Typed configuration: recipes are TOML, validated into dataclasses.

A recipe names its task; the task decides which dataclass validates the
`[data]` table. Every user mistake (unknown key, wrong type, unknown recipe)
raises `ConfigError` with a one-line message that says how to fix it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


class ConfigError(ValueError):
    """A problem with a recipe or an override that the user can fix."""


@dataclass
class ModelConfig:
    # The one dial (nanochat's): depth N gives N layers of width 64 x N in heads of about 128
    # (`depth_shape`). Set on the command line it replaces the recipe's shape; n_layer, n_embd
    # or n_head given beside it (in the same recipe, or on the command line) still win. 0: off
    depth: int = 0
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    block_size: int = 16
    vocab_size: int = 0  # 0: taken from the task's tokenizer
    dropout: float = 0.0
    bias: bool = False
    pos: Literal["learned", "rope"] = "learned"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    mlp: Literal["gelu", "relu2"] = "gelu"
    mlp_ratio: int = 4
    qk_norm: bool = False
    tie_embeddings: bool = True
    zero_init_proj: bool = False
    logit_softcap: float = 0.0  # 0 disables soft-capping
    smear: bool = False  # add a learned share of the previous token's embedding to each token's
    bigram: bool = False  # add a learned embedding of each (previous, current) token pair (vocabularies <= 256)
    value_embeddings: bool = False  # each block adds a second embedding of the token to its attention values
    # keep only each block's input in training and compute its activations again in the backward:
    # ~1/3 more compute for a fraction of the activation memory (`speedrun plan` shows both)
    checkpoint_activations: bool = False


@dataclass
class OptimConfig:
    name: Literal["adamw", "muon"] = "adamw"
    lr: float = 1e-3  # AdamW learning rate (embeddings, head, scalars under Muon)
    embed_lr: float = 0.0  # AdamW learning rate of the input embedding tables; 0: optim.lr
    # the width the AdamW rates are given for: at width d they are scaled by sqrt(ref / d), as
    # nanochat scales its embedding and head rates from width 768; Muon's are not. 0: no scaling
    lr_ref_width: int = 0
    muon_lr: float = 0.02  # Muon learning rate for 2-D hidden weights
    muon_momentum: float = 0.95
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0 disables clipping
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # final learning rate as a fraction of the peak
    warmdown_fraction: float = 0.2  # wsd: fraction of the run spent decaying


@dataclass
class TrainConfig:
    steps: int = 1000  # the run's length without a time budget (a budget lifts it: see max_steps)
    max_steps: int = 0  # a cap on steps that also holds under a time budget; 0: none
    batch_size: int = 64
    grad_accum: int = 1  # micro-batches per step over all processes (each takes grad_accum / processes)
    # global tokens per step: sets grad_accum = batch_tokens / (batch_size x model.block_size). 0: off
    batch_tokens: int = 0
    tokens: int = 0  # the run's token budget: steps = tokens / tokens per step. 0: off
    tokens_per_param: float = 0.0  # a budget of this many tokens per parameter (Chinchilla: 20). 0: off
    seed: int = 1337
    log_every: int = 50
    eval_every: int = 0  # 0: only at the end
    time_budget: float = 0.0  # wall-clock seconds from process start until training stops; 0: none
    target_val_loss: float = 0.0  # record time_to_target once val_loss <= target; 0: off
    target_val_bpb: float = 0.0  # the same on val_bpb (bits per byte of text: comparable across tokenizers)
    stop_at_target: bool = True  # stop training when the target is reached
    # stop once this many whole-split evaluations in a row (every eval_every steps) find no new best
    # val_loss; the run's model is then its best checkpoint, and a time budget only a cap. 0: off
    patience: int = 0
    compile: Literal[True, False, "auto"] = "auto"  # auto: only when the run is long enough to pay it back
    skip_nonfinite: int = 0  # steps with a NaN/inf loss whose update may be dropped before stopping
    tensorboard: bool = True  # event files in the run directory when tensorboard is installed
    wandb_project: str = ""  # log to Weights & Biases too (pip install wandb)
    init_from: str = ""  # a checkpoint or run directory whose weights start this run (fine-tuning)


@dataclass
class AdditionData:
    answer: Literal["plain", "reversed"] = "reversed"
    balance_carries: bool = True
    answer_loss_only: bool = True
    train_pairs: int = 0  # size of the training pool; 0: sample from all pairs
    probe_every: int = 0  # cheap check of carry-heavy pairs; 0: off
    stop_on_probe: bool = True  # stop early when the probe is fully correct
    val_fraction: float = 0.1  # share of the pool held out for val_loss


@dataclass
class TextData:
    source: str = ""  # file, directory, glob, .jsonl, .parquet, or hf:NAME; `--data PATH` sets it
    url: str = ""  # downloaded into the cache when no source is given
    val_source: str = ""  # an explicit validation source instead of a split
    text_field: str = "text"  # JSONL field, parquet column or hub dataset column
    doc_per_line: bool = False  # each non-empty line of a text file is one document
    val_fraction: float = 0.1  # validation: what training and tuning look at
    test_fraction: float = 0.0  # test: scored once, at the end (test_loss); never used for tuning
    split_seed: int = 1337
    tokenizer: Literal["char", "bpe"] = "char"
    vocab_size: int = 4096  # BPE only
    tokenizer_chars: int = 100_000_000  # BPE learns from at most this many characters of training text; 0: all
    shard_tokens: int = 1 << 26  # ids per training shard of a prepared dataset (64 Mi: 128 MB as uint16)
    # tokens each evaluation scores, the first of its split (all when fewer; 0: all). Scoring a token
    # costs ~1/3 of training on it, so val and test at 262,144 each take ~7% of shakespeare-bpe's
    # 2-minute run on a large corpus (benchmarks/data.py); every bundled recipe's split is smaller.
    eval_tokens: int = 1 << 18
    cache_dir: str = ""  # prepared datasets; default ~/.cache/speedrun
    tokenizer_file: str = ""  # a saved tokenizer (tokenizer.json) to use instead of fitting one
    hf_split: str = "train"
    epochs: float = 0.0  # > 0: train for this many passes over the training tokens
    eval_batches: int = 0  # > 0: a sampled estimate on this many batches between full evaluations
    sample_tokens: int = 200  # text sampled at each evaluation; 0: none
    sample_prompt: str = ""
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0


# Who a chat model says it is, unless a recipe or the chat pipeline says otherwise.
IDENTITY_NAME = "speedrun"
IDENTITY_CREATOR = "the speedrun developers"
IDENTITY_DESCRIPTION = "a small language model trained from scratch with speedrun"


@dataclass
class ChatData:
    tokenizer_file: str = ""  # the chat pipeline's tokenizer (with the chat special tokens)
    conversations: str = ""  # the user's own conversations (JSONL), mixed into training
    conversations_repeat: int = 1  # copies of each user conversation in the training pool
    train_items: int = 20000  # synthetic task conversations in the training pool
    val_items: int = 400  # conversations of the "val" split for val_loss (never the evaluated test items)
    eval_items: int = 50  # held-out items per task answered by generation in the final evaluation
    max_new_tokens: int = 64  # longest answer generated when evaluating
    # weights of the synthetic tasks in the training mixture
    addition: float = 1.0
    subtraction: float = 1.0
    spelling: float = 1.0
    counting: float = 1.0
    reversing: float = 0.5
    identity: float = 0.2
    identity_name: str = IDENTITY_NAME
    identity_creator: str = IDENTITY_CREATOR
    identity_description: str = IDENTITY_DESCRIPTION


@dataclass
class Config:
    task: str = "addition"
    recipe: str = ""
    description: str = ""
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: Any = field(default_factory=AdditionData)


@dataclass(frozen=True)
class TaskSpec:
    data: type  # the dataclass that validates the recipe's [data] table
    implementation: str  # "module:Class" of the Task, imported only when a run builds it


# Every task, named once: what validates its data, and what builds it (speedrun.tasks.build_task).
TASKS: dict[str, TaskSpec] = {
    "addition": TaskSpec(AdditionData, "speedrun.tasks.addition:AdditionTask"),
    "text": TaskSpec(TextData, "speedrun.tasks.text:TextTask"),
    "chat": TaskSpec(ChatData, "speedrun.tasks.chat:ChatTask"),
}


def recipe_names() -> list[str]:
    folder = resources.files("speedrun") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def read_recipe(name_or_path: str, _seen: tuple[str, ...] = ()) -> tuple[str, dict]:
    """Return (recipe name, raw TOML table) for a bundled name or a file path.

    A recipe with `extends = "other"` is the other recipe (bundled name or path) with its own keys
    laid over it, table by table, so a variant states only what it changes. A relative path
    there is read from the extending recipe's folder, wherever the command runs."""
    path = Path(name_or_path)
    is_file = name_or_path.endswith(".toml") or path.exists()
    if is_file:
        if not path.is_file():
            raise ConfigError(f"recipe file {name_or_path!r} not found; give an existing .toml path "
                              f"or one of: {', '.join(recipe_names())}")
        text, name = path.read_text(encoding="utf-8"), path.stem
    else:
        names = recipe_names()
        if name_or_path not in names:
            close = difflib.get_close_matches(name_or_path, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown recipe {name_or_path!r}{hint}; available: {', '.join(names)}")
        text = (resources.files("speedrun") / "recipes" / f"{name_or_path}.toml").read_text("utf-8")
        name = name_or_path
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"recipe {name_or_path!r} is not valid TOML: {e}") from None
    parent = table.pop("extends", None)
    if parent is None:
        return name, table
    if is_file and isinstance(parent, str) and (parent.endswith(".toml") or "/" in parent):
        parent = str(path.parent / parent)  # an absolute parent stays as it is
    chain = (*_seen, name_or_path)
    if not isinstance(parent, str) or parent in chain:
        raise ConfigError(f"recipe {name_or_path!r}: extends = {parent!r} must name another recipe, "
                          f"without a cycle ({' -> '.join((*chain, str(parent)))})")
    return name, _laid_over(read_recipe(parent, chain)[1], table)


def _laid_over(base: dict, top: dict) -> dict:
    """base with top's keys set over it; tables merge key by key, everything else is replaced."""
    merged = dict(base)
    for key, value in top.items():
        merged[key] = (_laid_over(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict)
                       else value)
    return merged


def recipe_description(name: str) -> str:
    return read_recipe(name)[1].get("description", "")


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Validate (and gently coerce int -> float) one value against a type hint."""
    if get_origin(tp) is Literal:
        if any(isinstance(c, bool) for c in get_args(tp)) and not (
                isinstance(value, bool) or (isinstance(value, str) and value in get_args(tp))):
            others = ", ".join(repr(c) for c in get_args(tp) if not isinstance(c, bool))
            raise ConfigError(f"{where} = {value!r} has the wrong type; expected bool or {others}")
        if value not in get_args(tp):
            choices = ", ".join(repr(c) for c in get_args(tp))
            raise ConfigError(f"{where} = {value!r} is not allowed; expected one of {choices}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Any or (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        return value
    raise ConfigError(f"{where} = {value!r} has the wrong type; expected {tp.__name__}")


def build_section(cls: type, table: dict, prefix: str) -> Any:
    hints = get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in table.items():
        where = f"{prefix}{key}"
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            hint = f"; did you mean {prefix + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {where!r}{hint} (valid: {', '.join(valid)})")
        tp = hints[key]
        if is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{where} must be a table of keys, not {value!r}")
            value = build_section(tp, value, f"{where}.")
        else:
            value = _check_type(value, tp, where)
        kwargs[key] = value
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse `a.b=value`; the value is read as TOML, falling back to a bare string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. train.seed=3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has no key before '='")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def _set_dotted(table: dict, path: list[str], value: Any) -> None:
    for part in path[:-1]:
        node = table.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {'.'.join(path)}: {part!r} is not a table")
        table = node
    table[path[-1]] = value


def load_config(recipe: str, overrides: list[str] = ()) -> Config:
    name, table = read_recipe(recipe)
    parsed = [parse_override(text) for text in overrides]
    if any(path == ["model", "depth"] for path, _ in parsed) and isinstance(table.get("model"), dict):
        # the dial given here replaces the recipe's shape; shape keys given here still win over it
        table["model"] = {k: v for k, v in table["model"].items() if k not in SHAPE_KEYS}
    for path, value in parsed:
        _set_dotted(table, path, value)
    return config_from_dict(table, recipe_name=name)


HEAD_DIM = 128  # the dial's head size (nanochat's)
SHAPE_KEYS = ("n_layer", "n_embd", "n_head")  # what model.depth sets
ASPECT = 64  # the dial's width per layer (nanochat's)


def heads_for(width: int) -> int:
    """Heads of about 128 for `width`: the divisor of width nearest width / 128, at least one."""
    divisors = [h for h in range(1, width + 1) if width % h == 0]
    return min(divisors, key=lambda h: (abs(h - width / HEAD_DIM), -h))


def depth_shape(depth: int, width: int = 0) -> dict:
    """n_layer, n_embd and n_head for `model.depth`: width 64 x depth (unless given) in heads
    of about 128, nanochat's rule; d20 is 20 x 1,280 in 10 heads, d12 12 x 768 in 6."""
    width = width or ASPECT * depth
    return {"n_layer": depth, "n_embd": width, "n_head": heads_for(width)}


def _dialled(table: dict) -> dict:
    """The raw recipe with model.depth turned into a shape and train.batch_tokens into
    grad_accum; keys given explicitly beside them win (a clash is an error)."""
    model, train = table.get("model", {}), table.get("train", {})
    if not isinstance(model, dict) or not isinstance(train, dict):
        return table
    table = dict(table)
    depth = model.get("depth", 0)
    if depth:
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            raise ConfigError(f"model.depth = {depth!r} must be a positive whole number of layers (0: off)")
        width = model.get("n_embd", 0)
        model = {**depth_shape(depth, width if isinstance(width, int) else 0), **model}
        table["model"] = model
    batch_tokens = train.get("batch_tokens", 0)
    if batch_tokens:
        micro = train.get("batch_size", TrainConfig.batch_size) * model.get("block_size", ModelConfig.block_size)
        if not isinstance(batch_tokens, int) or batch_tokens % micro:
            raise ConfigError(f"train.batch_tokens = {batch_tokens!r} must be a multiple of train.batch_size x "
                              f"model.block_size = {micro:,} tokens; change one of them")
        accum = batch_tokens // micro
        if train.get("grad_accum", accum) != accum:
            raise ConfigError(f"train.grad_accum = {train['grad_accum']} disagrees with train.batch_tokens = "
                              f"{batch_tokens:,} ({accum} micro-batches of {micro:,} tokens); give one of them")
        table["train"] = {**train, "grad_accum": accum}
    return table


def config_from_dict(table: dict, recipe_name: str = "") -> Config:
    table = _dialled(dict(table))
    task = table.get("task", Config.task)
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; available: {', '.join(TASKS)}")
    data = table.pop("data", {})
    if not isinstance(data, dict):
        raise ConfigError(f"data must be a table of keys, not {data!r}")
    table.setdefault("recipe", recipe_name)
    cfg = build_section(Config, table, "")
    cfg.data = build_section(TASKS[task].data, data, "data.")
    _validate(cfg)
    return cfg


def _validate(cfg: Config) -> None:
    m, t = cfg.model, cfg.train
    if cfg.dtype == "float16":
        raise ConfigError("dtype = float16 would train without the gradient scaler fp16 needs (and run Muon's "
                          "Newton-Schulz in fp16); use dtype=bfloat16 (GPUs since Ampere, CPUs with AVX-512 "
                          "BF16 or AMX) or dtype=float32")
    if m.n_embd % m.n_head:
        raise ConfigError(f"model.n_embd ({m.n_embd}) must be divisible by model.n_head ({m.n_head})")
    if m.pos == "rope" and (m.n_embd // m.n_head) % 2:
        raise ConfigError("rotary positions need an even head size; change model.n_embd or model.n_head")
    for name in ("steps", "batch_size", "grad_accum"):
        if getattr(t, name) < 1:
            raise ConfigError(f"train.{name} must be at least 1")
    if t.max_steps < 0 or t.time_budget < 0:
        raise ConfigError("train.max_steps and train.time_budget must be 0 (off) or positive")
    if t.tokens < 0 or t.tokens_per_param < 0 or (t.tokens and t.tokens_per_param):
        raise ConfigError("give the token budget once: train.tokens or train.tokens_per_param (0: off)")
    if t.patience < 0 or (t.patience and not t.eval_every):
        raise ConfigError(f"train.patience = {t.patience} counts evaluations without a new best val_loss: "
                          "give 0 (off) or a positive number, with train.eval_every above 0")
    if t.patience and getattr(cfg.data, "eval_batches", 0):
        raise ConfigError("train.patience counts whole-split evaluations, but data.eval_batches makes the "
                          "periodic ones sampled estimates; set data.eval_batches=0")
    if isinstance(cfg.data, TextData):
        d = cfg.data
        if d.shard_tokens < 1 or d.eval_tokens < 0 or d.tokenizer_chars < 0:
            raise ConfigError("data.shard_tokens must be at least 1, data.eval_tokens and data.tokenizer_chars "
                              "0 (all) or positive")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_toml(cfg: Config) -> str:
    """Serialise a config to TOML (flat scalars and one level of tables)."""

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):  # JSON's escapes are TOML's; TOML also wants DEL escaped
            return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
        return repr(v)

    top, tables = [], []
    for key, value in to_dict(cfg).items():
        if isinstance(value, dict):
            tables.append(f"\n[{key}]")
            tables += [f"{k} = {scalar(v)}" for k, v in value.items()]
        else:
            top.append(f"{key} = {scalar(value)}")
    return "\n".join(top + tables) + "\n"
