"""`speedrun verify`: does a recipe reach its target on every seed, or did one run get lucky?

A recipe runs N times with train.seed = 1..N (the seed sets the initial weights
and the order of the training data; the data split stays fixed), each in its
own process, one after another so they do not share the cores. From the N
summaries it writes a record (`verify.json`) and judges the claim:

- a loss target (text and chat runs): "the mean of `test_loss` is at most the
  target" (`val_loss` when the recipe has no test split), by a one-sided
  one-sample t-test of H0 "mean >= target", as modded-nanogpt accepts records;
- a pass/fail target (addition: `exact_match` = 1.0 over all 1,000,000 pairs):
  k of N seeds pass, judged by an exact one-sided binomial test of H0 "a seed
  passes with probability <= 1/2". With every seed passing, p = 2^-N: at least
  7 seeds are needed for p < 0.01.

The claim holds when p < 0.01. A seed whose run did not finish counts against
it. The t distribution comes from a regularized incomplete beta function
written here (a continued fraction), so the statistics need no scipy.

`speedrun verify chat-pipeline` runs the chat pipeline once per seed instead
(`speedrun chat-pipeline`, sft.train.seed = K, and base.train.seed = K when
every stage runs per seed) and judges its held-out test evaluation
(eval_sft.json; the questions stay fixed): on every seed, each task with a
target in CHAT_TASK_ACCURACY reaches it, and every task (the arithmetic asked
again without the calculator is shown, not judged) beats its constant-answer
baseline by CHAT_MARGIN_OVER_CONSTANT_POINTS. Every seed must pass, so there
is no test statistic: one failing seed fails the claim. To keep it
affordable, the tokenizer and base stages can run once (or come from a
finished pipeline folder) and each seed fine-tunes a copy of that base.

Both kinds share the seed loop (`run_seeds`: one cold process per seed, a seed
finished earlier with the same config reused), the provenance of the record
and its file; each kind says how a seed runs, what it left, and the verdict.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .config import Config, ConfigError, load_config, parse_override, to_dict
from .rundir import ChatRunDir, RunDir, git_commit, write_json

ALPHA = 0.01  # the claim holds when p < ALPHA
PASS_RATE = 0.5  # pass/fail targets: H0 is "a seed passes with at most this probability"


# ---------------------------------------------------------------- statistics

def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction
    (evaluated with the modified Lentz method), on the side of x where it converges fast."""
    if not 0 <= x <= 1:
        raise ValueError(f"betainc needs 0 <= x <= 1, got {x}")
    if x in (0.0, 1.0):
        return x
    if x > (a + 1) / (a + b + 2):
        return 1.0 - betainc(b, a, 1.0 - x)
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    tiny = 1e-300

    def nonzero(v: float) -> float:
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1.0 / nonzero(1.0 - (a + b) * x / (a + 1))
    fraction = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 / nonzero(1.0 + numerator * d)
            c = nonzero(1.0 + numerator / c)
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * fraction / a


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t distribution with df degrees of freedom."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_test_below(values: list[float], target: float) -> dict:
    """One-sided one-sample t-test of H0 "the mean is >= target": p is the chance of a
    sample mean this far below the target if the true mean were the target."""
    n = len(values)
    if n < 2:
        return {"t": None, "df": n - 1, "p_value": None}
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    if sd == 0:  # identical runs: no spread to test against
        return {"t": None, "df": n - 1, "p_value": 0.0 if mean < target else 1.0}
    t = (mean - target) / (sd / math.sqrt(n))
    return {"t": t, "df": n - 1, "p_value": student_t_cdf(t, n - 1)}


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed exactly."""
    return min(1.0, sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1)))


def seeds_needed(pass_rate: float = PASS_RATE, alpha: float = ALPHA) -> int:
    """The fewest seeds for which all passing gives p < alpha (pass_rate ** n < alpha)."""
    return math.floor(math.log(alpha) / math.log(pass_rate)) + 1


# ---------------------------------------------------------------- the claim

@dataclass
class Claim:
    metric: str  # "test_loss", "val_loss" or "exact_match", read from summary["metrics"]
    target: float
    kind: str  # "loss": mean <= target (t-test); "pass_fail": each seed >= target (binomial)
    time_key: str  # the summary's wall-clock time to the target: time_to_target or time_to_verified

    def reached(self, value: float | None) -> bool:
        if value is None:
            return False
        return value <= self.target if self.kind == "loss" else value >= self.target

    def describe(self) -> str:
        if self.kind == "loss":
            return f"mean {self.metric} <= {self.target:g}"
        return f"{self.metric} >= {self.target:g} on every seed"


def claim_for(cfg: Config, target: float | None = None) -> Claim:
    """The claim a recipe makes: addition, exact_match 1.0 (all pairs); text and chat,
    a loss at most `target` or the recipe's train.target_val_loss, on the test split
    when it has one."""
    if cfg.task == "addition":
        target = 1.0 if target is None else target
        if not 0 < target <= 1:
            raise ConfigError(f"--target {target} is not an exact-match rate; give a value in (0, 1], e.g. 1.0")
        return Claim("exact_match", target, "pass_fail", "time_to_verified")
    if target is None and cfg.train.target_val_bpb > 0:  # a per-byte target: judged per byte of test text
        metric = "test_bpb" if getattr(cfg.data, "test_fraction", 0) > 0 else "val_bpb"
        return Claim(metric, cfg.train.target_val_bpb, "loss", "time_to_target")
    target = target if target is not None else cfg.train.target_val_loss
    if not target or target <= 0:
        raise ConfigError(f"recipe {cfg.recipe or cfg.task!r} sets no train.target_val_loss; give the loss to "
                          "reach with --target, e.g. --target 1.8857")
    metric = "test_loss" if getattr(cfg.data, "test_fraction", 0) > 0 else "val_loss"
    return Claim(metric, target, "loss", "time_to_target")


def claim_overrides(cfg: Config, claim: Claim) -> list[str]:
    """Overrides that make each run time the claim's target: a loss target becomes
    train.target_val_loss (a per-byte one train.target_val_bpb), so the trainer
    records time_to_target (on val). Verify only watches: a target it sets does not
    stop the run, so each seed trains for the recipe's whole schedule and its final
    test loss is the recipe's, not that of a run cut short where val first touched
    the target."""
    if claim.kind != "loss":
        return []
    key = "target_val_bpb" if claim.metric.endswith("_bpb") else "target_val_loss"
    if getattr(cfg.train, key) != claim.target:
        return [f"train.{key}={claim.target!r}", "train.stop_at_target=false"]
    return []


def judge(claim: Claim, values: list[float | None]) -> dict:
    """The test of the claim over the seeds' values (None: the run did not finish)."""
    n, finished = len(values), [v for v in values if v is not None]
    if claim.kind == "pass_fail":
        passed = sum(claim.reached(v) for v in values)
        p = binomial_tail(passed, n, PASS_RATE) if n else None
        test = {"name": "one-sided exact binomial test", "null": f"a seed passes with probability <= {PASS_RATE}",
                "passed": passed, "n": n, "p_value": p, "seeds_needed_if_all_pass": seeds_needed()}
    elif len(finished) < n:
        test = {"name": "one-sided one-sample t-test", "null": f"mean {claim.metric} >= {claim.target:g}",
                "t": None, "df": None, "p_value": None, "unfinished": n - len(finished)}
    else:
        test = {"name": "one-sided one-sample t-test", "null": f"mean {claim.metric} >= {claim.target:g}",
                **t_test_below(finished, claim.target)}
    test["alpha"] = ALPHA
    test["holds"] = test["p_value"] is not None and test["p_value"] < ALPHA
    return test


def mean_sd(values: list[float | None]) -> dict:
    """Mean and sample standard deviation of the values that exist, and how many there are."""
    xs = [v for v in values if v is not None]
    return {"mean": statistics.fmean(xs) if xs else None, "sd": statistics.stdev(xs) if len(xs) > 1 else None,
            "n": len(xs)}


# ---------------------------------------------------------------- the chat claim

CHAT_PIPELINE = "chat-pipeline"  # `speedrun verify chat-pipeline`: the whole pipeline, not a recipe
CHAT_TASK_ACCURACY = {"addition": 0.95, "spelling": 0.90, "counting": 0.80}  # held-out accuracy, on every seed
CHAT_MARGIN_OVER_CONSTANT_POINTS = 30  # every judged task beats its constant-answer baseline by this much
CHAT_MIN_SEEDS = 3  # the chat claim is made over at least this many seeds


def judged(row: str) -> bool:
    """Whether an evaluation row is held to the margin: every task but the arithmetic asked
    again without the calculator (chat.evaluate's no-tool rows), which is shown, not a target."""
    from .chat.evaluate import NO_TOOL_TASKS

    return row not in {f"{task}_no_tool" for task in NO_TOOL_TASKS}


def task_verdict(row: str, accuracy: float, constant: float) -> dict:
    """One evaluation row against the chat claim: its margin over the constant answer in points,
    whether it reaches its target (None: it has none) and the margin (None: not judged). Both
    are rounded to 1e-9 first, so that 70% against a constant 40% is 30 points, not 29.999..."""
    target = CHAT_TASK_ACCURACY.get(row)
    margin = round((accuracy - constant) * 100, 9)
    return {"margin_points": margin, "target_met": None if target is None else round(accuracy, 9) >= target,
            "margin_met": margin >= CHAT_MARGIN_OVER_CONSTANT_POINTS if judged(row) else None}


def seed_misses(tasks: dict) -> list[str]:
    """What one seed's evaluation (rows with their task_verdict) misses of the claim, a task each."""
    missed = [f"{name} not evaluated" for name in CHAT_TASK_ACCURACY if name not in tasks]
    for name, row in tasks.items():
        why = [f"< {CHAT_TASK_ACCURACY[name]:.0%}"] if row["target_met"] is False else []
        if row["margin_met"] is False:
            why.append(f"{row['margin_points']:+.0f} points over its constant answer, "
                       f"< {CHAT_MARGIN_OVER_CONSTANT_POINTS}")
        if why:
            missed.append(f"{name} {row['accuracy']:.0%} ({'; '.join(why)})")
    return missed


def task_rows(entries: list[dict]) -> list[dict]:
    """Per task over the seeds: accuracy mean, sd, min and max, the constant answer, the margin's
    mean and min, and the verdict: "met" when the target (if any) and the margin hold on every
    seed, "MISSED" when not (a seed without the row counts against it), "shown" if not judged."""
    rows = []
    for name in dict.fromkeys(name for e in entries for name in e["tasks"]):
        found = [e["tasks"][name] for e in entries if name in e["tasks"]]
        every = len(found) == len(entries)
        accuracy, margins = [r["accuracy"] for r in found], [r["margin_points"] for r in found]
        target = CHAT_TASK_ACCURACY.get(name)
        target_met = None if target is None else every and all(r["target_met"] for r in found)
        margin_met = None if not judged(name) else every and all(r["margin_met"] for r in found)
        verdict = "shown" if margin_met is None else "met" if margin_met and target_met is not False else "MISSED"
        spread = mean_sd(accuracy)
        rows.append({"task": name, "target": target, "accuracy_mean": spread["mean"], "accuracy_sd": spread["sd"],
                     "accuracy_min": min(accuracy), "accuracy_max": max(accuracy),
                     "constant": mean_sd([r["constant"] for r in found])["mean"],
                     "margin_points_mean": mean_sd(margins)["mean"], "margin_points_min": min(margins),
                     "target_met": target_met, "margin_met": margin_met, "verdict": verdict, "n": len(found)})
    return rows


def chat_claim() -> str:
    targets = ", ".join(f"{name} >= {target:.0%}" for name, target in CHAT_TASK_ACCURACY.items())
    return (f"on every seed, {targets}, and every task (the no-tool rows shown, not judged) >= "
            f"{CHAT_MARGIN_OVER_CONSTANT_POINTS} points above its constant answer")


# ---------------------------------------------------------------- the record

def config_hash(cfg: Config) -> str:
    """sha256 of the resolved config without train.seed, the one thing verify varies."""
    table = to_dict(cfg)
    table["train"] = {k: v for k, v in table["train"].items() if k != "seed"}
    return hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()


def seed_entry(claim: Claim, seed: int, run_dir: str, summary: dict | None, exit_code: int,
               process_seconds: float | None) -> dict:
    """One seed's line of the record, from its summary.json (None if the run did not finish)."""
    summary = summary or {}
    value = summary.get("metrics", {}).get(claim.metric)
    return {"seed": seed, "run_dir": run_dir, "exit_code": exit_code, claim.metric: value,
            "reached": claim.reached(value), claim.time_key: summary.get(claim.time_key),
            "wall_seconds": summary.get("wall_seconds"), "train_seconds": summary.get("train_seconds"),
            "steps": summary.get("steps"), "process_seconds": process_seconds}


def machine(summaries: list[dict]) -> dict:
    """The CPU (model and the flags that decide matmul speed), GPU, and the matmul peaks
    the runs measured, by dtype."""
    import torch

    from .device import cpu_flags, hardware

    peaks = {s["dtype"]: s["peak_flops"] for s in summaries if s.get("peak_flops") and s.get("dtype")}
    return {**hardware(), "cpu_flags": cpu_flags(), "peak_flops": peaks, "torch_version": torch.__version__}


def provenance(summaries: list[dict]) -> dict:
    """Where and from what the seeds ran, for every kind of claim: the machine, Python, the commit, the date."""
    import platform

    return {"machine": machine(summaries), "python_version": platform.python_version(), "git_commit": git_commit(),
            "created": time.strftime("%Y-%m-%d %H:%M:%S")}


def build_record(recipe: str, overrides: list[str], cfg: Config, claim: Claim, seeds: list[dict],
                 summaries: list[dict]) -> dict:
    values = [s[claim.metric] for s in seeds]
    test = judge(claim, values)
    return {
        "recipe": recipe, "overrides": list(overrides), "task": cfg.task, "config_sha256": config_hash(cfg),
        "claim": claim.describe(), "metric": claim.metric, "target": claim.target, "kind": claim.kind,
        "time_key": claim.time_key, "n_seeds": len(seeds), "seeds": seeds,
        claim.metric: mean_sd(values), claim.time_key: mean_sd([s[claim.time_key] for s in seeds]),
        "wall_seconds": mean_sd([s["wall_seconds"] for s in seeds]),
        "test": test, "holds": test["holds"], **provenance(summaries),
    }


def build_chat_record(kind: ChatSeeds, seeds: list[dict], summaries: list[dict]) -> dict:
    """The chat claim's record: the settings, the base (if one), each seed's evaluation and
    seconds, per task the figures over the seeds, and the verdict: every seed meets every target
    and margin, over at least CHAT_MIN_SEEDS seeds."""
    missed = [f"seed {s['seed']}: {', '.join(s['missed'])}" for s in seeds if s["missed"]]
    return {
        "recipe": CHAT_PIPELINE, "kind": "tasks", "settings": kind.settings,
        "per_seed": "fine-tuning and its evaluation, from one base" if kind.base else "every stage",
        "stages": list(kind.stages()), "base": kind.base, "config_sha256": kind.digest, "claim": chat_claim(),
        "targets": dict(CHAT_TASK_ACCURACY), "margin_points": CHAT_MARGIN_OVER_CONSTANT_POINTS,
        "min_seeds": CHAT_MIN_SEEDS, "n_seeds": len(seeds), "seeds": seeds, "tasks": task_rows(seeds),
        "process_seconds": mean_sd([s["process_seconds"] for s in seeds]),
        "pipeline_seconds": mean_sd([s["pipeline_seconds"] for s in seeds]),
        "missed": missed, "holds": not missed and len(seeds) >= CHAT_MIN_SEEDS, **provenance(summaries),
    }


# ---------------------------------------------------------------- running the seeds, for either claim

CACHE_VARIABLES = ("SPEEDRUN_CACHE", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


def caches_note(warm: bool) -> str:
    if warm:
        return "warm: the seeds share this machine's speedrun, Inductor and Triton caches (--warm)"
    return ("cold: each seed starts with an empty speedrun cache (prepared data, matmul peak) and empty "
            "Inductor and Triton caches, as a new user's first run")


def run_command(args: list[str], warm: bool = False) -> tuple[int, float, str]:
    """`speedrun ARGS` in a fresh process: (exit code, seconds, its output). Cold (the default)
    points every cache the process reads at a new empty folder."""
    cmd = [sys.executable, "-m", "speedrun", *args]
    with tempfile.TemporaryDirectory(prefix="speedrun-verify-cold-") as empty:
        env = dict(os.environ)
        if not warm:
            env.update({name: str(Path(empty) / name.lower()) for name in CACHE_VARIABLES})
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        return proc.returncode, time.perf_counter() - t0, proc.stdout


def user_error(output: str) -> str:
    """The `error:` line of a command that failed on the user's config or data (exit code 2)."""
    lines = [x for x in output.splitlines() if x.startswith("error:")] or output.splitlines()[-1:]
    return (lines[-1] if lines else "failed").removeprefix("error: ")


def finished_earlier(path: Path, digest: str, digest_of, result_of, names: tuple[str, str]):
    """What a folder finished earlier with the same config left (so a verify that was stopped can
    be run again and only what is missing runs), or None. `digest_of(path)` is the config digest
    of what the folder holds (None: not such a folder), `result_of(path)` what it left (None: it
    did not finish); `names`, what the folder is and what it holds, for the errors. A folder that
    did not finish is removed: its times would not be whole."""
    if not path.exists():
        return None
    found = digest_of(path)
    if found is None:
        raise ConfigError(f"{path} exists and is not {names[0]}; give verify a new --out")
    if found != digest:
        raise ConfigError(f"{path} holds {names[1]} of another config; give verify a new --out")
    result = result_of(path)
    if result is None:
        shutil.rmtree(path)
    return result


def verify_folder(out: str | Path | None, name: str) -> Path:
    out = Path(out) if out else Path("runs") / f"verify-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    (out / "logs").mkdir(parents=True, exist_ok=True)
    return out


def check_seeds(seeds: int, enough: str) -> None:
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: give at least 1 ({enough})")


def run_seeds(kind, seeds: int, first_seed: int, out: Path, warm: bool, say) -> tuple[list[dict], list]:
    """Each seed in turn in OUT/seed-K/ (its output in OUT/logs/seed-K.txt): reused if it finished
    earlier with the same config, else run in its own process. `kind` is the claim's side of it:
    finished(path), prepare(path), command(seed, path), outcome(path) (what a finished seed left),
    entry(seed, path, outcome, exit_code, seconds) and line(entry). A seed failing on the user's
    config or data (exit code 2) stops the verify: every seed would fail the same way.
    Returns the record's entries and the outcomes (None: the seed did not finish)."""
    entries, outcomes = [], []
    for seed in range(first_seed, first_seed + seeds):
        path = out / f"seed-{seed}"
        outcome = kind.finished(path)
        code, seconds = 0, None
        if outcome is not None:
            say(f"seed {seed}: finished earlier in {path}, reused")
        else:
            kind.prepare(path)
            code, seconds, output = run_command(kind.command(seed, path), warm)
            (out / "logs" / f"seed-{seed}.txt").write_text(output, encoding="utf-8")
            if code == 2:
                raise ConfigError(f"seed {seed}: {user_error(output)}")
            outcome = kind.outcome(path) if code == 0 else None
        entry = kind.entry(seed, path, outcome, code, seconds)
        entries.append(entry)
        outcomes.append(outcome)
        say(kind.line(entry))
    return entries, outcomes


def write_verify_record(record: dict, out: Path, warm: bool, started: float, command: str | None) -> dict:
    """verify.json, with what every kind of claim states: the command, the caches, the folder and
    the whole verify's wall-clock (of this invocation: seeds reused from an earlier one add none)."""
    record.update(command=command, caches=caches_note(warm), out=str(out), verify_seconds=time.perf_counter() - started)
    write_json(out / "verify.json", record)
    return record


# ---------------------------------------------------------------- a recipe's seeds

def run_digest(path: Path) -> str | None:
    run = RunDir(path)
    return config_hash(load_config(str(run.config_file))) if run.config_file.is_file() else None


def run_summary(path: Path) -> dict | None:
    run = RunDir(path)
    return run.read_summary() if run.has_summary() else None


def finished_summary(path: Path, digest: str) -> dict | None:
    """The summary of a seed run finished earlier with the same config (see finished_earlier)."""
    return finished_earlier(path, digest, run_digest, run_summary, ("a run directory", "a run"))


@dataclass
class RecipeSeeds:
    """A recipe trained once per seed, `speedrun train` with train.seed = K, judged by its Claim."""
    recipe: str
    overrides: list[str]
    cfg: Config
    claim: Claim

    def __post_init__(self):
        self.digest = config_hash(self.cfg)

    def finished(self, path: Path) -> dict | None:
        return finished_summary(path, self.digest)

    def prepare(self, path: Path) -> None:
        """Nothing: `speedrun train --out` makes the run directory."""

    def command(self, seed: int, path: Path) -> list[str]:
        return ["train", self.recipe, *self.overrides, f"train.seed={seed}", "--out", str(path), "--quiet"]

    def outcome(self, path: Path) -> dict | None:
        return run_summary(path)

    def entry(self, seed: int, path: Path, summary: dict | None, code: int, seconds: float | None) -> dict:
        return seed_entry(self.claim, seed, str(path), summary, code, seconds)

    def line(self, entry: dict) -> str:
        return seed_line(self.claim, entry)


def verify(recipe: str, overrides: list[str] = (), seeds: int = 5, target: float | None = None,
           out: str | Path | None = None, first_seed: int = 1, say=print, warm: bool = False,
           command: str | None = None) -> dict:
    """Run the seeds (or reuse those already finished in `out`), write verify.json, return the record.
    Each seed runs cold unless `warm` (see run_command)."""
    started = time.perf_counter()
    check_seeds(seeds, "5 or more for a claim at p < 0.01")
    cfg = load_config(recipe, list(overrides))
    claim = claim_for(cfg, target)
    overrides = list(overrides) + claim_overrides(cfg, claim)
    kind = RecipeSeeds(recipe, overrides, load_config(recipe, overrides), claim)
    out = verify_folder(out, kind.cfg.recipe or kind.cfg.task)
    say(f"verify {recipe}: {seeds} seeds, claim: {claim.describe()}, in {out}")
    entries, summaries = run_seeds(kind, seeds, first_seed, out, warm, say)
    record = build_record(recipe, overrides, kind.cfg, claim, entries, [s or {} for s in summaries])
    if claim.metric.startswith("val_") and kind.cfg.task == "text":
        record["caveat"] = ("the recipe has no test split (data.test_fraction = 0): the claim is on the "
                            "validation split, the one tuning looks at")
    return write_verify_record(record, out, warm, started, command)


# ---------------------------------------------------------------- the chat pipeline's seeds

BASE, SFT = ChatRunDir.BASE, ChatRunDir.SFT
BASE_STAGES = ("tokenizer", BASE, f"eval_{BASE}")  # as `speedrun chat-pipeline --stage` names them
SFT_STAGES = (SFT, f"eval_{SFT}")
BASE_FROM = "verify_base"  # a seed's pipeline.json: the base it fine-tunes a copy of


def is_seed(override: str) -> bool:
    return parse_override(override)[0] == ["train", "seed"]


def settings_digest(settings: dict, base_sha256: str | None) -> str:
    """sha256 of a pipeline's settings ({"config", "overrides"}, as pipeline.json has them) without
    the stages' train.seed (what verify varies), and of the base the seeds fine-tune (None: every
    seed trains its own)."""
    overrides = {stage: [o for o in settings["overrides"].get(stage, []) if not is_seed(o)] for stage in (BASE, SFT)}
    table = {"config": settings["config"], "overrides": overrides, "base_summary_sha256": base_sha256}
    return hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()


def base_digest(settings: dict) -> str:
    """What decides a base: the pipeline's settings and the base stage's overrides."""
    return settings_digest({"config": settings["config"], "overrides": {BASE: settings["overrides"][BASE]}}, None)


def pipeline_arguments(settings: dict) -> list[str]:
    """`speedrun chat-pipeline` overrides that give exactly these settings: every pipeline key,
    then each stage's recipe overrides."""
    config = [f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in settings["config"].items()]
    return config + [f"{stage}.{o}" for stage in (BASE, SFT) for o in settings["overrides"].get(stage, [])]


def stage_options(stages: tuple[str, ...]) -> list[str]:
    return [option for stage in stages for option in ("--stage", stage)]


def start_pipeline(path: Path, settings: dict, stages: dict | None = None, base: dict | None = None) -> None:
    """pipeline.json before a command runs: the settings it runs with (so that a folder stopped
    before its first stage finished is still known as this verify's, and run again) and the
    stages it does not run, recorded finished."""
    path.mkdir(parents=True, exist_ok=True)
    state = {"stages": stages or {}, "config": settings["config"], "overrides": settings["overrides"]}
    if base:
        state[BASE_FROM] = {"folder": base["folder"], "summary_sha256": base["summary_sha256"]}
    ChatRunDir(path).write_state(state)


def recorded_settings(path: Path) -> dict | None:
    """A pipeline folder's pipeline.json, if it records settings (start_pipeline writes them first)."""
    state = ChatRunDir(path).read_state()
    return state if state and {"config", "overrides"} <= state.keys() else None


def pipeline_digest(path: Path) -> str | None:
    state = recorded_settings(path)
    return state and settings_digest(state, state.get(BASE_FROM, {}).get("summary_sha256"))


def recorded_base_digest(path: Path) -> str | None:
    state = recorded_settings(path)
    return state and base_digest(state)


def finished_base(path: Path) -> dict | None:
    """pipeline.json of a folder whose tokenizer and base stages finished; None if they did not."""
    chat = ChatRunDir(path)
    state = chat.read_state()
    done = state and all(stage in state["stages"] for stage in BASE_STAGES[:2])
    return state if done and chat.tokenizer_file.is_file() and chat.run(BASE).has_summary() else None


def base_settings(folder: str | Path) -> dict:
    """The settings of a finished base (its pipeline.json's config and base overrides, no fine-tuning
    overrides), which the seeds that fine-tune it run with; a one-line error naming the fix if the
    folder has no finished base."""
    state = finished_base(Path(folder))
    if state is None:
        raise ConfigError(f"--base {folder}: no finished tokenizer and base stage there (pipeline.json); make one "
                          f"with `speedrun chat-pipeline --out {folder} --stage tokenizer --stage base`, or use "
                          "--sft-only to train one")
    return {"config": state["config"], "overrides": {BASE: state["overrides"][BASE], SFT: []}}


def base_info(folder: Path, made_here: bool, process_seconds: float | None) -> dict:
    """The record's account of the one base: where it is, the sha256 of its summary (what a seed's
    copy is checked against), its stages' seconds, and whether this verify trained it."""
    chat = ChatRunDir(folder)
    stages = chat.read_state()["stages"]
    summary = chat.run(BASE).summary_file.read_bytes()
    return {"folder": str(folder), "summary_sha256": hashlib.sha256(summary).hexdigest(),
            "made_by_verify": made_here, "stage_seconds": {s: stages[s]["seconds"] for s in BASE_STAGES if s in stages},
            "process_seconds": process_seconds}


def given_base(folder: Path, settings: dict) -> dict:
    """A finished base the user named (--base), only ever read; the settings must be its own."""
    own = base_settings(folder)
    if base_digest(own) != base_digest(settings):
        raise ConfigError(f"--base {folder}: the pipeline settings or base overrides given differ from the base's own "
                          "(its pipeline.json); fine-tuning a base takes them from it")
    return base_info(folder, made_here=False, process_seconds=None)


def trained_base(folder: Path, settings: dict, warm: bool, say) -> dict:
    """The one base of --sft-only, in OUT/base/: reused if it finished earlier with these settings,
    else its tokenizer, base and eval_base stages run once, in their own process (cold unless warm)."""
    found = finished_earlier(folder, base_digest(settings), recorded_base_digest, finished_base,
                             ("a chat pipeline folder", "a base"))
    seconds = None
    if found is not None:
        say(f"base: finished earlier in {folder}, reused")
    else:
        start_pipeline(folder, settings)
        code, seconds, output = run_command([CHAT_PIPELINE, "--out", str(folder), "--quiet",
                                             *pipeline_arguments(settings), *stage_options(BASE_STAGES)], warm)
        log = folder.parent / "logs" / "base.txt"
        log.write_text(output, encoding="utf-8")
        if code == 2:
            raise ConfigError(f"the base: {user_error(output)}")
        if code != 0 or finished_base(folder) is None:
            raise ConfigError(f"the base did not finish (exit code {code}; see {log}), so no seed can fine-tune it")
        say(f"base: {folder} in {seconds:.1f} s")
    return base_info(folder, made_here=True, process_seconds=seconds)


def copy_base(base: dict, path: Path, settings: dict) -> None:
    """A seed's folder as the base left it: its tokenizer, base run and base evaluation copied (the
    base folder is only read) and those stages recorded finished, so the seed runs fine-tuning alone."""
    source, seed = ChatRunDir(base["folder"]), ChatRunDir(path)
    shutil.copytree(source.tokenizer_file.parent, seed.tokenizer_file.parent)
    shutil.copytree(source.run(BASE).path, seed.run(BASE).path)
    if source.eval_file(BASE).is_file():
        shutil.copy2(source.eval_file(BASE), seed.eval_file(BASE))
    stages = {k: v for k, v in source.read_state()["stages"].items() if k in BASE_STAGES}
    start_pipeline(path, settings, stages, base)


@dataclass
class ChatSeeds:
    """The chat pipeline once per seed, `speedrun chat-pipeline` with sft.train.seed = K: every
    stage, with base.train.seed = K too, or, given `base` (base_info of a finished base), only
    fine-tuning and its evaluation, in a copy of that base."""
    settings: dict  # {"config": the pipeline's settings, "overrides": {"base": [...], "sft": [...]}}
    base: dict | None = None

    def __post_init__(self):
        self.digest = settings_digest(self.settings, self.base["summary_sha256"] if self.base else None)

    def stages(self) -> tuple[str, ...]:
        return SFT_STAGES if self.base else BASE_STAGES + SFT_STAGES

    def finished(self, path: Path) -> dict | None:
        return finished_earlier(path, self.digest, pipeline_digest, self.outcome,
                                ("a chat pipeline folder", "a pipeline"))

    def prepare(self, path: Path) -> None:
        if self.base:
            copy_base(self.base, path, self.settings)
        else:
            start_pipeline(path, self.settings)

    def command(self, seed: int, path: Path) -> list[str]:
        seeded = [f"{SFT}.train.seed={seed}"] + ([] if self.base else [f"{BASE}.train.seed={seed}"])
        return [CHAT_PIPELINE, "--out", str(path), "--quiet", *pipeline_arguments(self.settings), *seeded,
                *stage_options(self.stages())]

    def outcome(self, path: Path) -> dict | None:
        """Its stages' figures, the fine-tuned model's evaluation and summary; None until eval_sft finished."""
        chat = ChatRunDir(path)
        state, evaluation, run = chat.read_state(), chat.read_eval(SFT), chat.run(SFT)
        if not state or evaluation is None or not run.has_summary() or not set(self.stages()) <= state["stages"].keys():
            return None
        return {"stages": state["stages"], "tasks": evaluation["tasks"], "summary": run.read_summary()}

    def entry(self, seed: int, path: Path, outcome: dict | None, code: int, seconds: float | None) -> dict:
        outcome = outcome or {}
        tasks = {name: {"accuracy": r["accuracy"], "constant": r["constant"],
                        **task_verdict(name, r["accuracy"], r["constant"])}
                 for name, r in outcome.get("tasks", {}).items()}
        stages, summary = outcome.get("stages", {}), outcome.get("summary", {})
        missed = seed_misses(tasks) if outcome else [f"did not finish (exit code {code}; see logs/seed-{seed}.txt)"]
        return {"seed": seed, "run_dir": str(path), "exit_code": code, "met": not missed, "missed": missed,
                "tasks": tasks, "stage_seconds": {s: stages[s]["seconds"] for s in self.stages() if s in stages},
                # the pipeline's wall-clock as its report counts it, the base's stages included
                "pipeline_seconds": sum(stages[s]["seconds"] for s in BASE_STAGES + SFT_STAGES if s in stages) or None,
                "dtype": summary.get("dtype"), "sft_steps": summary.get("steps"), "process_seconds": seconds}

    def line(self, entry: dict) -> str:
        if not entry["tasks"]:
            return f"seed {entry['seed']}: {entry['missed'][0]}"
        tasks = ", ".join(f"{name} {row['accuracy']:.0%}" for name, row in entry["tasks"].items())
        seconds = ", ".join(f"{stage} {s:.1f} s" for stage, s in entry["stage_seconds"].items())
        verdict = "met" if entry["met"] else "MISSED: " + ", ".join(entry["missed"])
        return f"seed {entry['seed']}: {tasks}: {verdict}; {seconds}"


def verify_chat(settings: dict, seeds: int = CHAT_MIN_SEEDS, out: str | Path | None = None, first_seed: int = 1,
                base: str | Path | None = None, sft_only: bool = False, say=print, warm: bool = False,
                command: str | None = None) -> dict:
    """Run the chat pipeline's seeds (or reuse those finished in `out`), write verify.json, return
    the record. `settings` is what every seed runs with, as pipeline.json records it ({"config":
    the pipeline keys, "overrides": {"base": [...], "sft": [...]}}). Every stage runs per seed,
    unless `base` (a folder whose tokenizer and base finished, with these settings: base_settings)
    or `sft_only` (that base trained once, in OUT/base/): then each seed fine-tunes a copy of it.
    Each process runs cold unless `warm`."""
    started = time.perf_counter()
    check_seeds(seeds, f"{CHAT_MIN_SEEDS} or more for the chat claim")
    one_base = base is not None or sft_only
    for stage in (SFT,) if one_base else (BASE, SFT):
        if any(map(is_seed, settings["overrides"][stage])):
            raise ConfigError(f"{stage}.train.seed: verify sets it to each seed's (--first-seed, --seeds); "
                              "leave it out")
    out = verify_folder(out, CHAT_PIPELINE)
    where = f"fine-tuning one base ({base or out / BASE})" if one_base else "every stage"
    say(f"verify {CHAT_PIPELINE}: {seeds} seeds, {where}; claim: {chat_claim()}; in {out}")
    if base is not None:
        base = given_base(Path(base), settings)
    elif sft_only:
        base = trained_base(out / BASE, settings, warm, say)
    kind = ChatSeeds(settings, base)
    entries, outcomes = run_seeds(kind, seeds, first_seed, out, warm, say)
    record = build_chat_record(kind, entries, [o["summary"] if o else {} for o in outcomes])
    return write_verify_record(record, out, warm, started, command)


# ---------------------------------------------------------------- the tables

def _num(value, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def _percent(value) -> str:
    return _num(None if value is None else value * 100, ".1f", "%")


def _columns(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [header] + rows]


def _machine_line(record: dict) -> str:
    m = record["machine"]
    return (f"machine: {m['cpu']}{' / ' + m['gpu'] if m.get('gpu') else ''}, torch {m['torch_version']}, "
            f"commit {(record['git_commit'] or '-')[:12]}, config sha256 {record['config_sha256'][:12]}")


def seed_line(claim: Claim, entry: dict) -> str:
    if entry[claim.metric] is None:
        return (f"seed {entry['seed']}: did not finish (exit code {entry['exit_code']}; "
                f"see logs/seed-{entry['seed']}.txt)")
    return (f"seed {entry['seed']}: {claim.metric} {entry[claim.metric]:.4f}, {claim.time_key} "
            f"{_num(entry[claim.time_key], '.1f', ' s')}, wall {_num(entry['wall_seconds'], '.1f', ' s')}")


def format_record(record: dict) -> str:
    """The record as one table and a verdict in plain words (a chat record: format_chat_record)."""
    if record["kind"] == "tasks":
        return format_chat_record(record)
    metric, time_key = record["metric"], record["time_key"]
    spec = ".6f" if record["kind"] == "pass_fail" else ".4f"
    header = ["seed", metric, "reached", time_key, "wall_seconds", "steps"]
    rows = [[str(s["seed"]), _num(s[metric], spec), "yes" if s["reached"] else "no",
             _num(s[time_key], ".1f"), _num(s["wall_seconds"], ".1f"), _num(s["steps"], "d")]
            for s in record["seeds"]]
    for label in ("mean", "sd"):
        rows.append([label, _num(record[metric][label], spec), "", _num(record[time_key][label], ".1f"),
                     _num(record["wall_seconds"][label], ".1f"), ""])
    lines = [f"speedrun verify {record['recipe']}: {record['n_seeds']} seeds; claim: {record['claim']}"]
    lines += [f"caches: {record['caches']}"] if record.get("caches") else []
    lines += [""] + _columns(header, rows)
    test = record["test"]
    p = test["p_value"]
    if record["kind"] == "pass_fail":
        detail = (f"{test['passed']} of {test['n']} seeds reached {metric} >= {record['target']:g}; "
                  f"{test['name']} of H0 \"{test['null']}\": p = {p:.4g}")
    elif p is None:
        detail = (f"{test['name']} not possible: " + (f"{test['unfinished']} seed(s) did not finish"
                                                       if test.get("unfinished") else "it needs at least 2 seeds"))
    else:
        t = "" if test["t"] is None else f"t = {test['t']:.3f}, df = {test['df']}, "
        detail = f"{test['name']} of H0 \"{test['null']}\": {t}p = {p:.4g}"
    lines += ["", detail]
    if record["holds"]:
        verdict = f"the claim HOLDS at p < {test['alpha']:g}"
    else:
        verdict = f"the claim is NOT SHOWN at p < {test['alpha']:g}"
        if record["kind"] == "pass_fail" and test["n"] < test["seeds_needed_if_all_pass"]:
            verdict += f" (even with every seed passing, it takes {test['seeds_needed_if_all_pass']} seeds)"
    if record.get("caveat"):
        verdict += f"; note: {record['caveat']}"
    lines += [verdict + ".", _machine_line(record)]
    return "\n".join(lines)


def format_chat_record(record: dict) -> str:
    """A chat record as two tables, per task over the seeds and per seed, and the verdict in plain words."""
    header = ["task", "target", "constant", "mean", "sd", "min", "max", "margin min", "verdict"]
    rows = [[r["task"], "-" if r["target"] is None else f">= {r['target']:.0%}", _percent(r["constant"]),
             _percent(r["accuracy_mean"]), _percent(r["accuracy_sd"]), _percent(r["accuracy_min"]),
             _percent(r["accuracy_max"]), _num(r["margin_points_min"], "+.1f", " pts"), r["verdict"]]
            for r in record["tasks"]]
    stages = record["stages"]
    seed_header = ["seed", "met", *(f"{s} s" for s in stages), "process s", "pipeline s", "dtype"]
    seed_rows = [[str(s["seed"]), "yes" if s["met"] else "no",
                  *(_num(s["stage_seconds"].get(k), ".1f") for k in stages),
                  _num(s["process_seconds"], ".1f"), _num(s["pipeline_seconds"], ".1f"), s["dtype"] or "-"]
                 for s in record["seeds"]]
    lines = [f"speedrun verify {record['recipe']}: {record['n_seeds']} seeds, per seed {record['per_seed']}; "
             f"claim: {record['claim']}"]
    lines += [f"caches: {record['caches']}"] if record.get("caches") else []
    lines += ["", "held-out test accuracy over the seeds (constant: the best constant answer):"]
    lines += _columns(header, rows) + [""] + _columns(seed_header, seed_rows) + [""]
    base = record["base"]
    if base:
        seconds = ", ".join(f"{stage} {s:.1f} s" for stage, s in base["stage_seconds"].items())
        made = "trained by this verify" if base["made_by_verify"] else "given with --base, only read"
        lines.append(f"base, once: {base['folder']} ({made}): {seconds}")
    lines.append(f"verify wall-clock: {_num(record.get('verify_seconds'), '.1f', ' s')}; pipeline s: every stage "
                 "before the report, the base's included")
    few = record["n_seeds"] < record["min_seeds"]
    if record["holds"]:
        verdict = "the claim HOLDS: every task met its target and margin on every seed"
    elif record["missed"]:
        verdict = "the claim does NOT hold: " + "; ".join(record["missed"])
    else:
        verdict = "the claim is NOT SHOWN: every seed met it"
    if few:
        verdict += f" (a chat claim takes at least {record['min_seeds']} seeds)"
    return "\n".join(lines + [verdict + ".", _machine_line(record)])
