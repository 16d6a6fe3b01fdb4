"""The run directory: everything a run leaves behind, in one folder.

    config.toml       the resolved config (recipe plus overrides)
    metrics.jsonl     one JSON object per logged step or evaluation (and metrics.csv)
    tensorboard/      the same metrics as TensorBoard event files
    samples.txt       text sampled at each evaluation (text runs)
    train.log         the log lines printed during the run
    tokenizer.json    the tokenizer, to reload with the checkpoint
    checkpoints/      last.safetensors, and best.safetensors (lowest val_loss) for text runs
    summary.json      the outcome: time, steps, parameters, metrics

A chat pipeline's folder holds two runs and the stages' files around them (`ChatRunDir`).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import time
from pathlib import Path

from .config import Config, ConfigError, load_config, to_toml


class RunDir:
    """The only code that knows a run folder's file names and formats."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, cfg: Config, out: str | None) -> "RunDir":
        if out is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = Path("runs") / f"{cfg.recipe or cfg.task}-{stamp}"
            n = 1
            while path.exists():
                n += 1
                path = Path("runs") / f"{cfg.recipe or cfg.task}-{stamp}-{n}"
        else:
            path = Path(out)
            if path.exists() and (not path.is_dir() or any(path.iterdir())):
                raise ConfigError(f"--out {out} already exists and is not empty; choose a new "
                                  f"directory or use --resume {out} to continue that run")
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path)
        run.config_file.write_text(to_toml(cfg), encoding="utf-8")
        return run

    @property
    def config_file(self) -> Path:
        return self.path / "config.toml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, name: str = "last") -> Path:
        return self.checkpoints / f"{name}.safetensors"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def read_metrics(self) -> list[dict]:
        """The records of metrics.jsonl. A last line cut short by a crash is dropped; a bad
        line anywhere else raises ValueError naming it."""
        if not self.metrics_file.is_file():
            return []
        lines = [x for x in self.metrics_file.read_text(encoding="utf-8").splitlines() if x.strip()]
        records = []
        for n, line in enumerate(lines, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                if n < len(lines):
                    raise ValueError(f"{self.metrics_file} line {n} is not valid JSON: {e}") from None
        return records

    def append_metrics(self, record: dict) -> None:
        """One record as one line of metrics.jsonl (NaN and infinity as null)."""
        with open(self.metrics_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(_finite(record)) + "\n")

    @property
    def metrics_csv(self) -> Path:
        return self.path / "metrics.csv"

    def write_metrics_csv(self) -> None:
        """metrics.csv from metrics.jsonl: one row per record, columns `step` then every other
        key in first-seen order. A record without a key, or with null (a non-finite number),
        leaves the cell empty; nested values (dicts, lists) have no single cell and are left out."""
        rows = [{k: v for k, v in record.items() if not isinstance(v, (dict, list))}
                for record in self.read_metrics()]
        columns = {"step": None}
        for row in rows:
            columns.update(dict.fromkeys(row))
        with open(self.metrics_csv, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(rows)

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    @property
    def submission_dir(self) -> Path:
        """Where `speedrun report` writes the run's leaderboard submission."""
        return self.path / "submission"

    def truncate_metrics(self, step: int) -> None:
        """Forget records past `step` (and a line cut short by a crash) before a resume
        logs those steps again, so metrics.jsonl reads as one uninterrupted run."""
        if not self.metrics_file.exists():
            return
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= step]
        tmp = self.path / ".metrics.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        tmp.replace(self.metrics_file)

    def write_tokenizer(self, tokenizer) -> None:
        (self.path / "tokenizer.json").write_text(tokenizer.to_json(), encoding="utf-8")

    def append_sample(self, step: int, text: str, final: bool = False) -> None:
        with open(self.path / "samples.txt", "a", encoding="utf-8") as f:
            f.write(f"--- step {step}{' (final)' if final else ''} ---\n{text}\n")

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    def has_summary(self) -> bool:
        """Whether the run finished: the trainer writes summary.json last."""
        return self.summary_file.is_file()

    def write_summary(self, summary: dict) -> None:
        write_json(self.summary_file, summary)

    def read_summary(self) -> dict:
        """summary.json; a file that is not JSON raises json.JSONDecodeError."""
        return read_json(self.summary_file)

    def has_checkpoint(self, name: str = "last") -> bool:
        return self.checkpoint(name).is_file()

    def discard_unstarted(self) -> None:
        """Remove the folder of a run that wrote no checkpoint (it stopped before training, or
        is to begin again), so that it does not clash with the next attempt's --out."""
        if self.path.exists() and not self.checkpoints.exists():
            shutil.rmtree(self.path)

    def save_checkpoint(self, name: str, model_state: dict, state: dict) -> None:
        from .checkpoint import save_checkpoint

        save_checkpoint(self.checkpoint(name), model_state, state)

    def resume_config(self) -> Config:
        """The config the run was started with, from its last checkpoint."""
        from .config import config_from_dict

        if not self.has_checkpoint("last"):
            raise ConfigError(f"cannot resume {self.path}: it has no checkpoint (checkpoints/last.safetensors)")
        return config_from_dict(self.load_checkpoint("last")[1]["config"])

    def load_checkpoint(self, name: str = "last") -> tuple[dict, dict]:
        from .checkpoint import load_checkpoint

        return load_checkpoint(self.checkpoint(name))

    def model_checkpoint(self) -> str:
        """Which checkpoint is the run's model: "best" for a run that stops by its validation
        split (train.patience), whose evaluations after the best found nothing better, else
        "last". Decided from config.toml, so that only the chosen checkpoint is read."""
        if not self.has_checkpoint("best"):
            return "last"
        if self.config_file.is_file():
            return "best" if load_config(str(self.config_file)).train.patience else "last"
        # a folder of checkpoints without its config.toml: the last checkpoint's config says
        patience = self.load_checkpoint("last")[1]["config"].get("train", {}).get("patience")
        return "best" if patience else "last"

    def load_model_weights(self) -> tuple[dict, dict]:
        """(weights, state) of the run's model, the checkpoint `model_checkpoint` names: its
        weights and its state (config, tokenizer)."""
        return self.load_checkpoint(self.model_checkpoint())

    def log(self, line: str) -> None:
        with open(self.path / "train.log", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def write_json(self, name: str, data: dict) -> None:
        write_json(self.path / name, data)

    def read_json(self, name: str) -> dict:
        return read_json(self.path / name)


def write_json(path: Path, data: dict) -> None:
    """speedrun's one JSON writer (summaries, states, exports): through a temporary file, so
    a crash leaves the old file or the new one, never half of one; UTF-8 as it is; NaN and
    infinity written as null."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_finite(data), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


class ChatRunDir:
    """A chat pipeline's folder: the only code that knows its layout.

        corpus.jsonl      the pretraining documents, one {"text": ...} per line
        tokenizer/        tokenizer.json (BPE with the chat tokens) and stats.json
        base/             the pretraining run (a run directory)
        eval_base.json    task accuracy of the base model, before fine-tuning
        sft/              the fine-tuning run (a run directory)
        eval_sft.json     task accuracy after fine-tuning
        report.md         every stage's figures, tables and plots
        pipeline.json     the settings and each finished stage's figures
    """

    BASE, SFT = "base", "sft"  # the two training stages, in the order they run, and their folders

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def state_file(self) -> Path:
        return self.path / "pipeline.json"

    def is_pipeline(self) -> bool:
        return self.state_file.is_file()

    def read_state(self) -> dict | None:
        return _read_if_present(self.state_file)

    def write_state(self, state: dict) -> None:
        write_json(self.state_file, state)

    @property
    def corpus_file(self) -> Path:
        return self.path / "corpus.jsonl"

    def write_corpus(self, docs: list[str]) -> None:
        with open(self.corpus_file, "w", encoding="utf-8") as f:
            for doc in docs:
                f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")

    @property
    def tokenizer_file(self) -> Path:
        return self.path / "tokenizer" / "tokenizer.json"

    def write_tokenizer(self, tokenizer, stats: dict) -> None:
        self.tokenizer_file.parent.mkdir(parents=True, exist_ok=True)
        self.tokenizer_file.write_text(tokenizer.to_json(), encoding="utf-8")
        write_json(self.tokenizer_file.with_name("stats.json"), stats)

    def read_tokenizer_stats(self) -> dict | None:
        return _read_if_present(self.tokenizer_file.with_name("stats.json"))

    def run(self, stage: str) -> RunDir:
        """The run directory of a training stage (BASE or SFT)."""
        return RunDir(self.path / stage)

    def finished_runs(self) -> list[RunDir]:
        """The training stages that have finished (written their summary), in the order they ran."""
        return [self.run(stage) for stage in (self.BASE, self.SFT) if self.run(stage).has_summary()]

    def trained_run(self) -> RunDir | None:
        """The run to talk with: the fine-tuned model, or the base model if fine-tuning has
        not written a checkpoint yet; None if neither has."""
        return next((self.run(stage) for stage in (self.SFT, self.BASE) if self.run(stage).has_checkpoint()), None)

    def eval_file(self, stage: str) -> Path:
        return self.path / f"eval_{stage}.json"

    def write_eval(self, stage: str, result: dict) -> None:
        write_json(self.eval_file(stage), result)

    def read_eval(self, stage: str) -> dict | None:
        return _read_if_present(self.eval_file(stage))

    @property
    def report_file(self) -> Path:
        return self.path / "report.md"


def _read_if_present(path: Path) -> dict | None:
    """A pipeline file of a stage that may not have run yet: None until it has."""
    return read_json(path) if path.is_file() else None


def _finite(obj):
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def git_commit() -> str | None:
    """The commit of the speedrun source tree, if it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def load_run_model(run_dir: str):
    """(model, tokenizer, config) from a run directory's model (`RunDir.load_model_weights`): the
    model in fp32 on the CPU, for `speedrun.loading` to place on the device its runtime names."""
    from .config import config_from_dict
    from .model import GPT
    from .tokenizer import load_tokenizer

    run = RunDir(Path(run_dir))
    if not run.path.is_dir():
        raise ConfigError(f"run directory {run_dir} does not exist; pass the folder `speedrun train` printed")
    model_state, state = run.load_model_weights()
    cfg = config_from_dict(state["config"])
    model = GPT(cfg.model)
    load_weights(model, model_state, f"the checkpoint of {run_dir}")
    return model.eval(), load_tokenizer(state["tokenizer"]), cfg


def load_weights(model, model_state: dict, what: str, fix: str = "") -> None:
    """Load weights into a model, or a one-line error naming what did not match."""
    try:
        model.load_state_dict(model_state)
    except RuntimeError as e:
        raise ConfigError(f"{what} does not match the model in the config ({str(e).splitlines()[0]}){fix}") from None
