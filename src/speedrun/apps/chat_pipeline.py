"""The chat pipeline: corpus -> tokenizer -> base model -> fine-tuned chat model, with a report.

Stages run in order, each writing into one folder (`rundir.ChatRunDir` knows its layout):

    tokenizer    the pretraining corpus (the default one, or --data's), exact duplicates dropped, and a
                 BPE tokenizer with the chat tokens trained on it
    base         pretraining (a normal run directory)
    eval_base    task accuracy of the base model (few-shot, plain text), before fine-tuning
    sft          fine-tuning on the task mixture and the user's conversations
    eval_sft     task accuracy after fine-tuning
    report       every stage's figures, tables and plots

A stage recorded as finished in pipeline.json is skipped when the command is
run again, so an interrupted pipeline picks up where it stopped (a training
stage resumes from its last checkpoint). Overrides go to the pipeline
(`vocab_size=1024`) or to a stage's recipe (`base.train.steps=100`,
`sft.data.spelling=2`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..config import (
    IDENTITY_CREATOR,
    IDENTITY_DESCRIPTION,
    IDENTITY_NAME,
    Config,
    ConfigError,
    build_section,
    load_config,
    parse_override,
)
from ..rundir import ChatRunDir

BASE, SFT = ChatRunDir.BASE, ChatRunDir.SFT
COMPRESSION_CHARS = 5_000_000  # validation text the tokenizer's bytes per token are measured on
STAGES = ("tokenizer", BASE, f"eval_{BASE}", SFT, f"eval_{SFT}", "report")  # each is a method stage_<name>


@dataclass
class PipelineConfig:
    corpus: str = ""  # a text source as for `speedrun train --data`; "": Python's own documentation
    text_field: str = "text"  # JSONL field or parquet column of the corpus
    vocab_size: int = 2048
    val_fraction: float = 0.05  # share of the corpus held out (tokenizer compression, base val_bpb)
    base_recipe: str = "chat-base"
    sft_recipe: str = "chat-sft"
    eval_items: int = 100  # held-out questions per task, before and after fine-tuning
    few_shot: int = 3  # solved examples shown to the base model before each question
    max_new_tokens: int = 64
    seed: int = 1337
    device: str = "auto"
    identity_name: str = IDENTITY_NAME
    identity_creator: str = IDENTITY_CREATOR
    identity_description: str = IDENTITY_DESCRIPTION


def parse_pipeline_overrides(overrides: list[str]) -> tuple[PipelineConfig, list[str], list[str]]:
    """(pipeline settings, base recipe overrides, sft recipe overrides)."""
    table, base, sft = {}, [], []
    for text in overrides:
        path, value = parse_override(text)
        if path[0] in (BASE, SFT) and len(path) > 1:
            (base if path[0] == BASE else sft).append(text.split(".", 1)[1])
        elif len(path) == 1:
            table[path[0]] = value
        else:
            raise ConfigError(f"override {text!r}: use a pipeline key ({', '.join(f.name for f in fields(PipelineConfig))}) "
                              "or base.<key>/sft.<key> for a stage's recipe")
    return build_section(PipelineConfig, table, ""), base, sft


def stage_config(stage: str, recipe: str, overrides: list[str], settings: dict[str, Any],
                 fixed: tuple[str, ...] = ()) -> Config:
    """A stage's recipe with its overrides, then the pipeline's settings (dotted keys) wherever the
    user did not override them. Keys under `fixed` the pipeline always replaces: overriding them is
    a one-line error, never silently dropped."""
    given = {".".join(parse_override(text)[0]) for text in overrides}
    for key in sorted(given):
        if key.startswith(fixed):
            raise ConfigError(f"{stage}.{key}: fine-tuning continues the base model, so its shape comes from "
                              f"the base stage; set base.{key} instead")
    cfg = load_config(recipe, overrides)
    for key, value in settings.items():
        if key not in given:
            cfg = replace_dotted(cfg, key.split("."), value)
    return cfg


def replace_dotted(obj, path: list[str], value):
    """A copy of a nest of dataclasses with the field at `path` replaced."""
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})
    return dataclasses.replace(obj, **{path[0]: replace_dotted(getattr(obj, path[0]), path[1:], value)})


class Pipeline:
    def __init__(self, out: str | Path, cfg: PipelineConfig, base_overrides: list[str] = (),
                 sft_overrides: list[str] = (), progress: bool = True):
        self.folder, self.cfg, self.progress = ChatRunDir(out), cfg, progress
        self.base_overrides, self.sft_overrides = list(base_overrides), list(sft_overrides)
        self.state = self.folder.read_state() or {"stages": {}}
        # the stage configs are checked before any work starts, so a typo fails in a second
        self.sft_config()  # (which builds the base stage's config too)

    # --- bookkeeping ----------------------------------------------------
    def done(self, stage: str) -> bool:
        return stage in self.state["stages"]

    def record(self, stage: str, seconds: float, **figures) -> None:
        self.state["stages"][stage] = {"seconds": seconds, **figures}
        self.state["config"] = asdict(self.cfg)
        self.state["overrides"] = {BASE: self.base_overrides, SFT: self.sft_overrides}
        self.folder.write_state(self.state)

    def say(self, line: str) -> None:
        print(line, flush=True)

    def run(self, stages: tuple[str, ...] = STAGES, force: bool = False) -> dict:
        self.folder.path.mkdir(parents=True, exist_ok=True)
        for stage in STAGES:
            if stage not in stages:
                continue
            if self.done(stage) and not force and stage != "report":
                self.say(f"[{stage}] finished earlier, skipped (pipeline.json)")
                continue
            self.say(f"[{stage}] starting")
            t0 = time.perf_counter()
            figures = getattr(self, f"stage_{stage}")() or {}
            seconds = time.perf_counter() - t0
            self.record(stage, seconds, **figures)
            self.say(f"[{stage}] done in {seconds:.1f}s")
        return self.state

    # --- stage configs --------------------------------------------------
    @property
    def tokenizer_file(self) -> Path:
        return self.folder.tokenizer_file

    def base_config(self) -> Config:
        c = self.cfg
        # the user's corpus is read where it is, streamed (prepare); the default one is written here
        source = {"data.source": c.corpus, "data.text_field": c.text_field} if c.corpus else {
            "data.source": str(self.folder.corpus_file)}
        return stage_config(BASE, c.base_recipe, self.base_overrides, {
            **source, "data.tokenizer_file": str(self.tokenizer_file),
            "data.val_fraction": c.val_fraction, "train.seed": c.seed, "device": c.device})

    def sft_config(self) -> Config:
        c = self.cfg
        cfg = stage_config(SFT, c.sft_recipe, self.sft_overrides, {
            "data.tokenizer_file": str(self.tokenizer_file), "train.seed": c.seed,
            "train.init_from": str(self.folder.run(BASE).path), "device": c.device,
            "data.identity_name": c.identity_name, "data.identity_creator": c.identity_creator,
            "data.identity_description": c.identity_description}, fixed=("model.",))
        return dataclasses.replace(cfg, model=self.base_config().model)  # fine-tuning continues the base model

    # --- stages ---------------------------------------------------------
    def stage_tokenizer(self) -> dict:
        """The chat tokenizer, trained on at most the base recipe's data.tokenizer_chars characters
        of the corpus's training documents, streamed; its compression measured on up to
        COMPRESSION_CHARS of the validation documents."""
        from ..chat.corpus import python_docs
        from ..chat.template import train_chat_tokenizer
        from ..data import iter_documents, unique_documents
        from ..data.encode import within_budget
        from ..data.split import TRAIN, VAL, split_of

        c, data = self.cfg, self.base_config().data
        counts = {}
        if not c.corpus:
            loaded = python_docs()
            docs = unique_documents(loaded)
            self.folder.write_corpus(docs)
            counts = {"documents": len(docs), "duplicates_dropped": len(loaded) - len(docs),
                      "corpus_bytes": sum(len(d.encode()) for d in docs)}

        def documents(split: int):
            docs = iter_documents(data.source, data.text_field)
            return (d for d in docs if split_of(d, data.split_seed, data.val_fraction, data.test_fraction) == split)

        tok = train_chat_tokenizer(within_budget(documents(TRAIN), data.tokenizer_chars), c.vocab_size,
                                   progress=self.progress)
        val_docs = list(within_budget(documents(VAL), COMPRESSION_CHARS))
        val_bytes = sum(len(d.encode()) for d in val_docs)
        val_tokens = sum(len(tok.encode(d)) for d in val_docs)
        stats = {"vocab_size": tok.vocab_size, **counts,
                 "corpus": c.corpus or "Python's documentation (pydoc topics and standard-library docstrings)",
                 "tokenizer_chars": data.tokenizer_chars, "val_bytes": val_bytes,
                 "val_bytes_per_token": val_bytes / max(val_tokens, 1)}
        self.folder.write_tokenizer(tok, stats)
        self.say(f"[tokenizer] {tok.vocab_size} tokens, {stats['val_bytes_per_token']:.2f} bytes/token "
                 "on held-out text")
        return {"val_bytes_per_token": stats["val_bytes_per_token"]}

    def train_stage(self, name: str, cfg) -> dict:
        from ..run import Run

        started = time.perf_counter()  # the stage's budget counts from the stage's start, its setup included
        run = self.folder.run(name)
        if run.has_checkpoint():
            summary = Run(cfg, started=started, progress=self.progress, resume_dir=run).execute()
        else:
            run.discard_unstarted()  # a start that wrote no checkpoint: begin again
            summary = Run(cfg, out=run.path, started=started, progress=self.progress).execute()
        keep = ("val_loss", "val_bpb", "best_val_loss")
        return {"train_seconds": summary["train_seconds"], "steps": summary["steps"],
                "stopped_by": summary["stopped_by"], "tokens_per_second": summary["tokens_per_second"],
                "mfu": summary["mfu"], **{k: summary["metrics"][k] for k in keep if k in summary["metrics"]},
                **({"best_step": summary["best_step"]} if "best_step" in summary else {})}

    def stage_base(self) -> dict:
        return self.train_stage(BASE, self.base_config())

    def stage_sft(self) -> dict:
        return self.train_stage(SFT, self.sft_config())

    def evaluate(self, stage: str) -> dict:
        """The held-out questions: the base model few-shot in plain text (it never saw the
        chat tokens), the fine-tuned model in the chat template."""
        from ..tasks.chat import identity_options, task_weights
        from ..loading import load_engine
        from ..chat.evaluate import eval_items, evaluate_tasks

        c, sft = self.cfg, self.sft_config().data
        tasks, identity = list(task_weights(sft)), identity_options(sft)
        engine = load_engine(self.folder.run(stage).path, c.device)
        items = eval_items(tasks, c.eval_items, c.seed, identity)
        shots = eval_items(tasks, c.few_shot, c.seed, identity, split="train") if stage == BASE else None
        result = evaluate_tasks(engine, items, c.max_new_tokens, self.progress, shots=shots)
        self.folder.write_eval(stage, result)
        table = ", ".join(f"{k} {v['accuracy']:.0%}" for k, v in result["tasks"].items())
        self.say(f"[eval_{stage}] {table}; score {result['score']:.3f}")
        return {"score": result["score"], **{k: v["accuracy"] for k, v in result["tasks"].items()}}

    def stage_eval_base(self) -> dict:
        return self.evaluate(BASE)

    def stage_eval_sft(self) -> dict:
        return self.evaluate(SFT)

    def stage_report(self) -> dict:
        from .chat_report import write_chat_report

        path = write_chat_report(self.folder.path, self.state)
        self.say(f"[report] wrote {path}")
        return {}
