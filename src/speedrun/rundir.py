"""The run directory: everything a run leaves behind, in one folder.

    config.toml       the resolved config (recipe plus overrides)
    metrics.jsonl     one JSON object per logged step or evaluation (and metrics.csv)
    tensorboard/      the same metrics as TensorBoard event files
    samples.txt       text sampled at each evaluation (text runs)
    train.log         the log lines printed during the run
    tokenizer.json    the tokenizer, to reload with the checkpoint
    checkpoints/      last.safetensors, and best.safetensors (lowest val_loss) for text runs
    summary.json      the outcome: time, steps, parameters, metrics
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

from .config import Config, ConfigError, to_toml


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
        (path / "config.toml").write_text(to_toml(cfg), encoding="utf-8")
        return run

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

    def write_summary(self, summary: dict) -> None:
        self.write_json("summary.json", summary)

    def read_summary(self) -> dict:
        return self.read_json("summary.json")

    def save_checkpoint(self, name: str, model_state: dict, state: dict) -> None:
        from .checkpoint import save_checkpoint

        save_checkpoint(self.checkpoint(name), model_state, state)

    def resume_config(self) -> Config:
        """The config the run was started with, from its last checkpoint."""
        from .config import config_from_dict

        if not self.checkpoint("last").exists():
            raise ConfigError(f"cannot resume {self.path}: it has no checkpoint (checkpoints/last.safetensors)")
        return config_from_dict(self.load_checkpoint("last")[1]["config"])

    def load_checkpoint(self, name: str = "last") -> tuple[dict, dict]:
        from .checkpoint import load_checkpoint

        return load_checkpoint(self.checkpoint(name))

    def log(self, line: str) -> None:
        with open(self.path / "train.log", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def write_json(self, name: str, data: dict) -> None:
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(json.dumps(_finite(data), indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.path / name)

    def read_json(self, name: str) -> dict:
        return json.loads((self.path / name).read_text(encoding="utf-8"))


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


def load_run_model(run_dir: str, device: str = "cpu"):
    """(model, tokenizer, config, runtime) from a run directory's last checkpoint."""
    from .config import config_from_dict
    from .device import setup_runtime
    from .model import GPT
    from .tokenizer import load_tokenizer

    run = RunDir(Path(run_dir))
    if not run.path.is_dir():
        raise ConfigError(f"run directory {run_dir} does not exist; pass the folder `speedrun train` printed")
    model_state, state = run.load_checkpoint("last")
    cfg = config_from_dict(state["config"])
    rt = setup_runtime(device, cfg.dtype, cfg.model.n_embd)
    model = GPT(cfg.model)
    load_weights(model, model_state, f"the checkpoint of {run_dir}")
    model.to(rt.device).eval()
    return model, load_tokenizer(state["tokenizer"]), cfg, rt


def load_weights(model, model_state: dict, what: str, fix: str = "") -> None:
    """Load weights into a model, or a one-line error naming what did not match."""
    try:
        model.load_state_dict(model_state)
    except RuntimeError as e:
        raise ConfigError(f"{what} does not match the model in the config ({str(e).splitlines()[0]}){fix}") from None
