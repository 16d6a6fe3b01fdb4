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

    def truncate_metrics(self, step: int) -> None:
        """Forget records past `step` (and any line cut short by a crash) before a resume
        logs those steps again, so metrics.jsonl reads as one uninterrupted run."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        tmp = path.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(x + "\n" for x in kept), encoding="utf-8")
        tmp.replace(path)

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
    from .checkpoint import load_checkpoint
    from .config import config_from_dict
    from .device import setup_runtime
    from .model import GPT
    from .tokenizer import load_tokenizer

    run = RunDir(Path(run_dir))
    if not run.path.is_dir():
        raise ConfigError(f"run directory {run_dir} does not exist; pass the folder `speedrun train` printed")
    model_state, state = load_checkpoint(run.checkpoint("last"))
    cfg = config_from_dict(state["config"])
    rt = setup_runtime(device, cfg.dtype, cfg.model.n_embd)
    model = GPT(cfg.model)
    model.load_state_dict(model_state)
    model.to(rt.device).eval()
    return model, load_tokenizer(state["tokenizer"]), cfg, rt
