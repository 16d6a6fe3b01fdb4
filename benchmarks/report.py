"""Write docs/results.md from the JSON records in results/, so no figure is pasted by hand.

    python -m benchmarks report            # (re)write docs/results.md
    python -m benchmarks report --check    # exit 1 if docs/results.md is not what the records give

Each record kind has a small renderer: a verify record (`speedrun verify`, of a recipe or of the
chat pipeline), a speed record (the speed benchmark), the generalize, data, plan, chat and GPU
benchmarks' records, a chat pipeline's folder, and the rest (how it was made, its scalars, its tables). A record made before
`common.write_record` (a string machine line, a commit with "+dirty", no caches) renders as it
always did; one made through it states its machine, torch and caches in the same bullets.
Numbers are read as decimals and a number written with at most six digits is shown as it is
written, so a converted printout's figures appear exactly as printed; longer ones (a float a
program wrote) are rounded for reading. The output depends on the records only: running it
twice gives the same file.
"""

from __future__ import annotations

import argparse
import json
import sys
from decimal import Decimal
from pathlib import Path

from benchmarks.common import PROG, RESULTS, ROOT, describe

OUT = ROOT / "docs" / "results.md"
GIB = 2 ** 30


def load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 1000 else str(value)
    if isinstance(value, Decimal):
        if len(value.as_tuple().digits) <= 6:
            return str(value)
        x = float(value)
        if x == 0:
            return "0"
        if abs(x) < 0.001 or abs(x) >= 1e9:
            return f"{x:.3g}"
        if abs(x) < 10:
            return f"{x:.4f}"
        if abs(x) < 1000:
            return f"{x:.2f}"
        return f"{x:,.0f}"
    if isinstance(value, list):
        return "; ".join(fmt(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict], columns: list[str] | None = None) -> list[str]:
    """A Markdown table of `rows`; the columns are every key in order of first appearance."""
    if columns is None:
        columns = []
        for row in rows:
            columns += [key for key in row if key not in columns]
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(fmt(row.get(key)) for key in columns) + " |" for row in rows]
    return lines + [""]


def about(record: dict, keys: list[str]) -> list[str]:
    """How a record was made: each of `keys` it has, one bullet each, a key's *_note or *_from beside it."""
    lines = []
    for key in keys:
        if key not in record:
            continue
        value = record[key]
        if key == "argv" and isinstance(value, list):
            value = " ".join(value)
        if key == "machine" and isinstance(value, str):
            value = value.removeprefix("machine: ")
        if key == "machine" and isinstance(value, dict):
            value = describe(value)
        text = f"`{fmt(value)}`" if key in ("command", "argv") and value is not None else fmt(value)
        for extra in ("_from", "_note"):
            if key + extra in record:
                text += f" ({record[key + extra]})"
        lines.append(f"- {key}: {text}")
    return lines + [""]


META = ["benchmark", "command", "argv", "commit", "dirty", "machine", "torch", "date", "cold", "caches", "seeds",
        "duration", "converted_from"]


def verify_machine(record: dict) -> str:
    """A verify record's machine (its own shape, not write_record's): CPU, GPU, flags, the peaks its runs measured."""
    machine = record["machine"]
    peaks = ", ".join(f"{dtype} {float(flops) / 1e9:.0f} GFLOP/s" for dtype, flops in machine["peak_flops"].items())
    return (f"{machine['cpu']}, {machine['cpu_count']} cores, GPU {fmt(machine['gpu'])}, flags "
            f"[{' '.join(machine['cpu_flags'])}], measured peaks {peaks}, torch {machine['torch_version']}, "
            f"Python {record['python_version']}")


def verify_command(record: dict) -> dict:
    """The command bullet: as recorded, or (a record older than the command's recording) what it must have been."""
    if record.get("command"):
        return {"command": record["command"]}
    return {"command": None, "command_note": f"not recorded; `speedrun verify {record['recipe']}`, "
                                             f"{record['n_seeds']} seeds, one process each"}


def verify(record: dict) -> list[str]:
    if record.get("kind") == "tasks":
        return verify_chat(record)
    lines = about({**verify_command(record), "overrides": record["overrides"] or None, "commit": record["git_commit"],
                   "machine": verify_machine(record), "date": record["created"],
                   **({"caches": record["caches"]} if "caches" in record else {})},
                  ["command", "overrides", "commit", "machine", "date", "caches"])
    lines += [f"Claim: {record['claim']} (config sha256 {record['config_sha256'][:12]}).", ""]
    lines += table([{k: v for k, v in seed.items() if k != "run_dir"} for seed in record["seeds"]])
    metrics = [key for key, value in record.items() if isinstance(value, dict) and "mean" in value]
    lines += table([{"metric": key, **record[key]} for key in metrics])
    lines += table([{k: v for k, v in record["test"].items()}])
    return lines


def verify_chat(record: dict) -> list[str]:
    """A `speedrun verify chat-pipeline` record: the settings and the base, per task over the seeds (the
    line the README quotes first), then per seed its accuracies and stage seconds."""
    settings, base = record["settings"], record["base"]
    lines = about({**verify_command(record), "commit": record["git_commit"], "machine": verify_machine(record),
                   "date": record["created"], "caches": record["caches"]},
                  ["command", "commit", "machine", "date", "caches"])
    lines += [f"Claim: {record['claim']}; {record['n_seeds']} seeds, each running {record['per_seed']} "
              f"(config sha256 {record['config_sha256'][:12]}).", ""]
    config, overrides = settings["config"], settings["overrides"]
    lines += [f"Pipeline: seed {config['seed']} (the held-out questions), vocabulary {config['vocab_size']}, "
              f"{config['eval_items']} items per task; overrides: base {fmt(overrides['base']) or 'none'}, "
              f"fine-tuning {fmt(overrides['sft']) or 'none'}.", ""]
    if base:
        stages = ", ".join(f"{stage} {float(seconds):.1f} s" for stage, seconds in base["stage_seconds"].items())
        made = "trained by this verify" if base["made_by_verify"] else "given with --base"
        lines += [f"Base, once: `{base['folder']}` ({made}): {stages}.", ""]
    lines += [f"In one line: {chat_claim_line(record)}.", ""]
    lines += ["Held-out test accuracy per task over the seeds (constant: the best constant answer; margin: "
              "points above it):", ""]
    lines += table(record["tasks"], ["task", "target", "accuracy_mean", "accuracy_sd", "accuracy_min",
                                     "accuracy_max", "constant", "margin_points_mean", "margin_points_min", "verdict"])
    rows = [{"seed": seed["seed"], "met": seed["met"], **{task: row["accuracy"] for task, row in seed["tasks"].items()},
             **{f"{stage} s": seconds for stage, seconds in seed["stage_seconds"].items()},
             "process s": seed["process_seconds"], "pipeline s": seed["pipeline_seconds"], "dtype": seed["dtype"],
             "sft steps": seed["sft_steps"]} for seed in record["seeds"]]
    lines += ["Per seed (process s: the seed's command, wall-clock; pipeline s: every stage before the report, "
              "the base's included):", ""] + table(rows)
    verdict = "holds" if record["holds"] else "does not hold"
    missed = f" ({'; '.join(record['missed'])})" if record["missed"] else ""
    return lines + [f"Verdict: the claim {verdict}{missed}; the whole verify took "
                    f"{float(record['verify_seconds']) / 60:.1f} min.", ""]


def chat_claim_line(record: dict) -> str:
    """Each judged task's mean +/- sd (min) beside its constant answer, in percent."""
    def pct(value) -> str:
        return f"{float(value) * 100:.1f}"

    return "; ".join(f"{row['task']} {pct(row['accuracy_mean'])} +/- {pct(row['accuracy_sd'] or 0)}% "
                     f"(min {pct(row['accuracy_min'])}%, constant {pct(row['constant'])}%)"
                     for row in record["tasks"] if row["verdict"] != "shown")


def speed(record: dict) -> list[str]:
    lines = about(record, META + ["date_note"])
    lines += ["Runs (one row per command and seed):", ""] + table(record["runs"])
    lines += ["Summary, as printed at the end of the run:", ""] + table(record["summary"])
    return lines


def generalize(record: dict) -> list[str]:
    """The generalize benchmark's record: its corpora (package, version, size, sha256 of the text),
    then its runs and summary."""
    lines = about(record, META)
    lines += ["Corpora (Tiny Shakespeare tuned the recipes; the others only check them):", ""]
    lines += table(record["corpora"])
    lines += ["Runs (one row per command, corpus and seed):", ""] + table(record["runs"])
    lines += ["Summary, as printed at the end of the run:", ""]
    return lines + table(record["summary"], ["claim", "corpus", "run", "dtype", "median", "unit", "min", "max", "n",
                                             "target", "verdict"])


def data(record: dict) -> list[str]:
    lines = about(record, META + ["measured_command"])
    lines += table([{"corpus": name, **corpus} for name, corpus in record["corpora"].items()])
    runs = []
    for run in record["runs"]:
        prepared = run["prepared"]
        row = {k: v for k, v in run.items() if k not in ("prepared", "prepared_folder")}
        row["train_tokens"] = prepared["train"]["tokens"]
        row["shards"] = prepared["train"]["shards"]
        row["encoder"] = prepared["encoder"]
        row["encode_seconds"] = prepared["encode_seconds"]
        runs.append(row)
    lines += ["Runs (page_cache_dropped: cold page cache; prepared_before: the dataset was prepared already):", ""]
    lines += table(runs)
    lines += table([{"encoder": key, "value": value} for key, value in record["encoders"].items()])
    lines += ["Targets, measured against the target:", ""]
    lines += table([{"target": key, "measured": pair[0], "target value": pair[1]}
                    for key, pair in record["targets"].items()])
    return lines


def plan(record: dict) -> list[str]:
    lines = about(record, META + ["data", "target_ratio"])
    lines += ["Predicted against measured on this machine (each recipe calibrated once, then timed):", ""]
    lines += table([plan_check(run) for run in record["recipes"]])
    for run in record["recipes"]:
        if "rerun" in run:
            lines += [f"`{run['recipe']}` was rerun alone: `{' '.join(run['rerun']['argv'])}` at commit "
                      f"{run['rerun']['commit']}, {run['rerun']['date']}, {run['rerun']['machine']}.", ""]
    if record.get("disturbed_runs"):
        lines += ["Runs replaced:", ""]
        lines += table([{**plan_check(run), "why_replaced": run["why_replaced"]} for run in record["disturbed_runs"]])
    lines += ["Plans (`speedrun plan`, not run):", ""]
    rows = []
    for entry in record["gpu_plans"]:
        p = entry["plan"]
        rows.append({"command": entry["command"], "device": p["device"], "devices": p["devices"],
                     "parameters": p["parameters"], "tokens": p["tokens"], "steps": p["steps"],
                     "device_batch": p["device_batch"], "grad_accum": p["grad_accum"],
                     "memory GiB per device": round(Decimal(p["memory_bytes_per_device"]) / GIB, 1),
                     "checkpointed GiB": round(Decimal(p["memory_bytes_per_device_checkpointed"]) / GIB, 1),
                     "device GiB": round(Decimal(p["device_memory_bytes"]) / GIB, 1),
                     "largest batch": p["largest_device_batch"],
                     "largest checkpointed": p["largest_device_batch_checkpointed"],
                     "mfu": p["mfu"], "hours": round(p["seconds"] / 3600, 1), "usd": p["usd"],
                     "notes": p["notes"] or None})
    lines += table(rows)
    sources = sorted({(e["plan"]["device"], e["plan"].get("peak_from", ""), e["plan"].get("mfu_from", ""))
                      for e in record["gpu_plans"]})
    lines += [f"- {device}: peak from {peak_from}; MFU {mfu_from}" for device, peak_from, mfu_from in sources] + [""]
    return lines


def plan_check(run: dict) -> dict:
    return {"recipe": run["recipe"], "command": run["command"], "calibration": run["calibration"],
            "page_cache_dropped": run["page_cache_dropped"], "predicted_seconds": run["predicted_seconds"],
            "measured_stopwatch_seconds": run["measured_stopwatch_seconds"], "ratio": run["ratio"],
            "predicted_steps": run["predicted_steps"], "measured_steps": run["measured_steps"],
            "plan_mfu": run["plan_mfu"], "measured_mfu": run["measured_mfu"], "met": run["met"]}


def chat(folder: Path) -> list[str]:
    """A chat pipeline's folder, with the record.json written beside it by hand."""
    record = load(folder / "record.json")
    lines = about(record, ["command", "commit", "machine", "date"])
    if "note" in record:
        lines += [record["note"] + ".", ""]
    evaluations = {name: load(folder / f"{name}.json")["tasks"] for name in ("eval_base", "eval_sft")
                   if (folder / f"{name}.json").exists()}
    return lines + pipeline_tables(load(folder / "pipeline.json"), evaluations)


def chat_record(record: dict) -> list[str]:
    """The chat benchmark's record: the pipeline's state and its evaluations, in one file."""
    lines = about(record, META + ["folder", "wall_seconds"])
    return lines + pipeline_tables(record["pipeline"], record["evaluations"])


def pipeline_tables(pipeline: dict, evaluations: dict) -> list[str]:
    config = pipeline["config"]
    lines = [f"Pipeline: seed {config['seed']}, vocabulary {config['vocab_size']}, base recipe "
             f"`{config['base_recipe']}`, fine-tuning recipe `{config['sft_recipe']}`, {config['eval_items']} items "
             f"per task; overrides: base {fmt(pipeline['overrides']['base']) or 'none'}, "
             f"fine-tuning {fmt(pipeline['overrides']['sft']) or 'none'}.", ""]
    stages = [{"stage": name, **stage} for name, stage in pipeline["stages"].items()]
    lines += table(stages, ["stage", "seconds", "train_seconds", "steps", "tokens_per_second", "mfu", "val_loss",
                            "val_bpb", "val_bytes_per_token", "score"])
    # the pipeline's total, as its report.md counts it: every stage before the report
    total = sum(stage["seconds"] for name, stage in pipeline["stages"].items() if name != "report")
    lines += [f"Tokenizer to eval_sft: {float(total):.1f} s ({float(total) / 60:.1f} min).", ""]
    after = evaluations["eval_sft"]
    rows = []
    for task, result in after.items():
        row = {"task": task, "items": result["total"], "constant": result["constant"]}
        if "eval_base" in evaluations:
            row["before (base, few-shot)"] = evaluations["eval_base"][task]["accuracy"]
        row["after fine-tuning"] = result["accuracy"]
        row["margin over constant"] = result["accuracy"] - result["constant"]
        rows.append(row)
    lines += [f"Accuracy on held-out items, greedy ({', '.join(f'{name}.json' for name in evaluations)}):", ""]
    lines += table(rows)
    return lines


def gpu(record: dict) -> list[str]:
    """The GPU benchmark's record: one table per step, its scalars and those one level down (the
    output's tail left to the record)."""
    lines = about(record, META + ["dry_run", "gpu_count", "gpu_memory_bytes", "cuda"])
    for name, step in record["steps"].items():
        rows = []
        for key, value in step.items():
            if isinstance(value, dict):
                rows += [{"key": f"{key}.{k}", "value": v} for k, v in value.items() if not isinstance(v, dict)]
            elif key != "output_tail":
                rows.append({"key": key, "value": value})
        lines += [f"Step `{name}`:", ""] + table(rows)
    return lines


def generic(record: dict) -> list[str]:
    """A record of a kind with no renderer of its own: how it was made, its scalars, its lists of rows."""
    lines = about(record, META)
    shown = META + [key + extra for key in META for extra in ("_from", "_note")]  # about's bullets
    scalars = [{"key": k, "value": v} for k, v in record.items() if k not in shown and not isinstance(v, dict)
               and not (isinstance(v, list) and any(isinstance(item, (dict, list)) for item in v))]
    lines += table(scalars) if scalars else []
    for key, value in record.items():
        if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
            lines += [f"{key}:", ""] + table([{k: v for k, v in row.items() if not isinstance(v, (dict, list))}
                                               for row in value])
    return lines


def kind(path: Path):
    """The renderer for a record file or folder, or None for what is not a record."""
    if path.is_dir():
        return chat if (path / "pipeline.json").exists() else None
    if path.suffix != ".json":
        return None
    if path.name.startswith("verify-"):
        return verify
    if path.name.startswith("speed"):
        return speed
    if path.name.startswith("generalize"):
        return generalize
    if path.name.startswith("chat"):
        return chat_record
    if path.name.startswith("gpu"):
        return gpu
    return {"data.json": data, "plan.json": plan}.get(path.name, generic)


def render() -> str:
    entries = [(path, kind(path)) for path in sorted(RESULTS.iterdir())]
    unknown = [path.name for path, renderer in entries if renderer is None]
    if unknown:
        raise SystemExit(f"not a record: results/{', results/'.join(unknown)} (results/ holds JSON records and "
                         "chat pipeline folders; convert a printout to a record)")
    lines = ["# Results", "",
             f"Generated by `{PROG} report` from every record in [results/](../results/); do not edit "
             f"by hand (`{PROG} report --check` fails when this file is stale). The README's headline "
             "table quotes these records; [history.md](history.md) tells how the figures came about.", ""]
    lines += [f"- [results/{path.name}](#results{anchor(path.name)})" for path, _ in entries] + [""]
    for path, renderer in entries:
        name = path.name + ("/" if path.is_dir() else "")
        lines += [f"## results/{name}", "", f"Record: [results/{name}](../results/{name})", ""]
        lines += renderer(path) if renderer is chat else renderer(load(path))
    return "\n".join(lines).rstrip("\n") + "\n"


def anchor(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum() or c in "-_")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/results.md differs from the records")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT.relative_to(ROOT)} is stale: run {PROG} report", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
