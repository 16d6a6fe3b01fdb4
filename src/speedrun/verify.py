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

`speedrun verify chat-pipeline` judges the chat pipeline's claim instead
(speedrun.verify_chat), through the same seed loop.

Here, for both kinds: the seed loop (`run_seeds`: one cold process per seed, a
seed finished earlier with the same config reused), the provenance of the
record and its file, and the table helpers; each kind says how a seed runs,
what it left, and the verdict.
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

from .config import Config, ConfigError, load_config, to_dict
from .rundir import RunDir, git_commit, write_json

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


# ---------------------------------------------------------------- the tables

def num(value, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def percent(value) -> str:
    return num(None if value is None else value * 100, ".1f", "%")


def columns(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [header] + rows]


def machine_line(record: dict) -> str:
    m = record["machine"]
    return (f"machine: {m['cpu']}{' / ' + m['gpu'] if m.get('gpu') else ''}, torch {m['torch_version']}, "
            f"commit {(record['git_commit'] or '-')[:12]}, config sha256 {record['config_sha256'][:12]}")


def seed_line(claim: Claim, entry: dict) -> str:
    if entry[claim.metric] is None:
        return (f"seed {entry['seed']}: did not finish (exit code {entry['exit_code']}; "
                f"see logs/seed-{entry['seed']}.txt)")
    return (f"seed {entry['seed']}: {claim.metric} {entry[claim.metric]:.4f}, {claim.time_key} "
            f"{num(entry[claim.time_key], '.1f', ' s')}, wall {num(entry['wall_seconds'], '.1f', ' s')}")


def format_record(record: dict) -> str:
    """A recipe's record as one table and a verdict in plain words (a chat record:
    verify_chat.format_chat_record)."""
    metric, time_key = record["metric"], record["time_key"]
    spec = ".6f" if record["kind"] == "pass_fail" else ".4f"
    header = ["seed", metric, "reached", time_key, "wall_seconds", "steps"]
    rows = [[str(s["seed"]), num(s[metric], spec), "yes" if s["reached"] else "no",
             num(s[time_key], ".1f"), num(s["wall_seconds"], ".1f"), num(s["steps"], "d")]
            for s in record["seeds"]]
    for label in ("mean", "sd"):
        rows.append([label, num(record[metric][label], spec), "", num(record[time_key][label], ".1f"),
                     num(record["wall_seconds"][label], ".1f"), ""])
    lines = [f"speedrun verify {record['recipe']}: {record['n_seeds']} seeds; claim: {record['claim']}"]
    lines += [f"caches: {record['caches']}"] if record.get("caches") else []
    lines += [""] + columns(header, rows)
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
    lines += [verdict + ".", machine_line(record)]
    return "\n".join(lines)


