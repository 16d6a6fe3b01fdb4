"""`speedrun verify chat-pipeline`: the chat claim, judged on every seed.

The chat pipeline runs once per seed (`speedrun chat-pipeline`, sft.train.seed
= K, and base.train.seed = K when every stage runs per seed), and its held-out
test evaluation (eval_sft.json; the questions stay fixed) is judged: on every
seed, each task with a target in CHAT_TASK_ACCURACY reaches it, and every task
(the arithmetic asked again without the calculator is shown, not judged) beats
its constant-answer baseline by CHAT_MARGIN_OVER_CONSTANT_POINTS. Every seed
must pass, so there is no test statistic: one failing seed fails the claim. To
keep it affordable, the tokenizer and base stages can run once (or come from a
finished pipeline folder) and each seed fine-tunes a copy of that base.

The seed loop, the record's provenance and its file are speedrun.verify's,
shared with a recipe's claim.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, parse_override
from .rundir import ChatRunDir
from .verify import (
    check_seeds,
    columns,
    finished_earlier,
    machine_line,
    mean_sd,
    num,
    percent,
    provenance,
    run_command,
    run_seeds,
    user_error,
    verify_folder,
    write_verify_record,
)

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



def format_chat_record(record: dict) -> str:
    """A chat record as two tables, per task over the seeds and per seed, and the verdict in plain words."""
    header = ["task", "target", "constant", "mean", "sd", "min", "max", "margin min", "verdict"]
    rows = [[r["task"], "-" if r["target"] is None else f">= {r['target']:.0%}", percent(r["constant"]),
             percent(r["accuracy_mean"]), percent(r["accuracy_sd"]), percent(r["accuracy_min"]),
             percent(r["accuracy_max"]), num(r["margin_points_min"], "+.1f", " pts"), r["verdict"]]
            for r in record["tasks"]]
    stages = record["stages"]
    seed_header = ["seed", "met", *(f"{s} s" for s in stages), "process s", "pipeline s", "dtype"]
    seed_rows = [[str(s["seed"]), "yes" if s["met"] else "no",
                  *(num(s["stage_seconds"].get(k), ".1f") for k in stages),
                  num(s["process_seconds"], ".1f"), num(s["pipeline_seconds"], ".1f"), s["dtype"] or "-"]
                 for s in record["seeds"]]
    lines = [f"speedrun verify {record['recipe']}: {record['n_seeds']} seeds, per seed {record['per_seed']}; "
             f"claim: {record['claim']}"]
    lines += [f"caches: {record['caches']}"] if record.get("caches") else []
    lines += ["", "held-out test accuracy over the seeds (constant: the best constant answer):"]
    lines += columns(header, rows) + [""] + columns(seed_header, seed_rows) + [""]
    base = record["base"]
    if base:
        seconds = ", ".join(f"{stage} {s:.1f} s" for stage, s in base["stage_seconds"].items())
        made = "trained by this verify" if base["made_by_verify"] else "given with --base, only read"
        lines.append(f"base, once: {base['folder']} ({made}): {seconds}")
    lines.append(f"verify wall-clock: {num(record.get('verify_seconds'), '.1f', ' s')}; pipeline s: every stage "
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
    return "\n".join(lines + [verdict + ".", machine_line(record)])
