"""What every benchmark shares: where things are, the targets, the machine line, and the one
record writer, so that every record states the same things about how it was made."""

from __future__ import annotations

import argparse
import functools
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from speedrun.verify_chat import CHAT_MARGIN_OVER_CONSTANT_POINTS, CHAT_TASK_ACCURACY  # noqa: F401 (defined once, there)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"  # beside the repository
PROG = "python -m benchmarks"

# --- targets, each defined once ---------------------------------------------------
# nanoGPT's own figures for Tiny Shakespeare, the yardsticks of the speed issue
NANOGPT_CPU_VAL_LOSS = 1.8857  # nanoGPT's CPU recipe at step 2000 (the `nanogpt-cpu` baseline)
NANOGPT_A100_VAL_LOSS = 1.4697  # nanoGPT's GPU recipe on an A100, "about 3 minutes"
# the speed issue (speed): its four targets
SPEEDUP_TO_NANOGPT_CPU_VAL_LOSS = 10.0  # the baseline's whole command over ours, to NANOGPT_CPU_VAL_LOSS
VAL_LOSS_AT_NANOGPT_CPU_WALLCLOCK = 1.55  # per character, given the baseline's stopwatch
VAL_LOSS_IN_TEN_MINUTES = NANOGPT_A100_VAL_LOSS  # per character, in 600 s on this CPU
CHAT_BASE_VAL_BPB = 1.40  # the chat pipeline's base stage, in its 7-minute budget
# round one (same_wallclock), before the speed issue asked for 1.55
ROUND_ONE_VAL_LOSS_AT_NANOGPT_CPU_WALLCLOCK = 1.60
THROUGHPUT_SPEEDUP_AT_NANOGPT_CPU_SHAPE = 2.0  # fastest settings found over fp32 AdamW (throughput)
MUON_OVER_ADAMW_TOKENS_PER_SECOND = 0.85  # Muon within 15% of AdamW (muon)
# addition
ADDITION_TIME_TO_VERIFIED_SECONDS = 20.0  # median over seeds, from process start
ADDITION_CHECK_SECONDS = 5.0  # the passing exhaustive check over all 1,000,000 pairs
# the chat pipeline (chat)
CHAT_PIPELINE_MINUTES = 30.0
# and each task's accuracy and margin over its constant answer: CHAT_TASK_ACCURACY and
# CHAT_MARGIN_OVER_CONSTANT_POINTS, from speedrun.verify_chat, which judges them over seeds (verify chat-pipeline)
# corpora bigger than memory (data, issue 23)
DATA_PEAK_RSS_BYTES = 1.5e9  # at 5 GB
DATA_PEAK_GROWTH = 1.3  # largest corpus against the smallest
DATA_PREPARATION_VS_ENCODE_BATCH = 0.8  # preparation against tokenizers' own batch encoding
DATA_FIRST_STEP_SECONDS = 5.0  # second run, prepared dataset
DATA_EVAL_FRACTION = 0.10
PLAN_RELATIVE_ERROR = 0.2  # |predicted / measured - 1| (plan, issue 24)
# figures that travel (generalize, issue 26): shakespeare-char to nanogpt-cpu's own val loss on each corpus
GENERALIZE_SPEEDUP = 10.0  # baseline's whole command over ours, median of 3 seeds, every held-out corpus
TINY_SHAKESPEARE_SPEEDUP_SLOWEST_CPU = 12.0  # the same on Tiny Shakespeare, on the slowest CPU measured


# --- the machine ---------------------------------------------------------------------
def matmul_peaks() -> dict[str, float]:
    """This CPU's matmul peaks in FLOP/s, measured afresh (which also refreshes the cache that
    runs read MFU against): fp32, and bf16 where the CPU runs it natively (emulated, it is what no
    run trains in, and a 2048-wide matmul takes minutes)."""
    import torch

    from speedrun.device import native_bf16
    from speedrun.flops import peak_flops

    cpu = torch.device("cpu")
    dtypes = [torch.float32, torch.bfloat16] if native_bf16("cpu") else [torch.float32]
    return {str(dtype).removeprefix("torch."): peak_flops(cpu, dtype, refresh=True) for dtype in dtypes}


@functools.cache
def machine() -> dict:
    """CPU model, cores, SIMD flags, native bf16, the measured matmul peaks and the GPU (if CUDA
    sees one); measured once per process, so the line printed first and the record agree."""
    from speedrun.device import cpu_flags, hardware, native_bf16

    h = hardware()
    return {"cpu": h["cpu"], "cpu_count": h["cpu_count"], "cpu_flags": cpu_flags(),
            "native_bf16": native_bf16("cpu"), "matmul_peak_flops": matmul_peaks(), "gpu": h["gpu"]}


def describe(m: dict | None = None) -> str:
    """The machine line every benchmark prints first (of `m`, a record's machine, or this one)."""
    m = machine() if m is None else m
    peaks = ", ".join(f"{'fp32' if dtype == 'float32' else 'bf16'} {float(flops) / 1e9:,.0f} GFLOP/s"
                      for dtype, flops in m["matmul_peak_flops"].items())
    return (f"{m['cpu']}, {m['cpu_count']} cores, flags [{' '.join(m['cpu_flags']) or 'none'}], "
            f"native bf16: {'yes' if m['native_bf16'] else 'no'}; measured matmul peaks: {peaks}"
            + (f"; GPU {m['gpu']}" if m.get("gpu") else ""))


def torch_version() -> str:
    import torch

    return torch.__version__


def print_machine() -> None:
    print(f"machine: {describe()}; torch {torch_version()}", flush=True)


# --- the record --------------------------------------------------------------------
def git_state() -> dict:
    """The checkout's commit, and whether tracked files differed from it (untracked ones do not count)."""
    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def command_line(benchmark: str) -> str:
    """This process's command as `python -m benchmarks NAME ARGS`, however it was started."""
    return shlex.join([*PROG.split(), benchmark, *sys.argv[1:]])


CACHES = ("cold", "warm")


def write_record(benchmark: str, payload: dict, *, caches: str, out: Path | None = None,
                 seeds: list | None = None, caches_note: str | None = None, command: str | None = None) -> Path:
    """Write `payload` to `out` (default results/BENCHMARK.json) with how it was made: the command
    line, the commit (and whether the tree was dirty), the date, the machine, torch's version,
    the caches ("cold": emptied before every measured command; "warm": kept, as for a second run)
    and the seeds. A benchmark that writes as it goes calls it again with more; the file is
    replaced whole each time."""
    from speedrun.rundir import write_json

    if caches not in CACHES:
        raise ValueError(f"caches must be one of {CACHES}, not {caches!r}")
    record = {"benchmark": benchmark, "command": command or command_line(benchmark), **git_state(),
              "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "torch": torch_version(),
              "caches": caches}
    if caches_note:
        record["caches_note"] = caches_note
    if seeds is not None:
        record["seeds"] = list(seeds)
    clash = sorted(record.keys() & payload.keys())
    if clash:
        raise ValueError(f"the payload may not set what the record states itself: {', '.join(clash)}")
    path = Path(out) if out else RESULTS / f"{benchmark}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record | payload)
    print(f"record: {path}", flush=True)
    return path


# --- arguments and summaries ---------------------------------------------------------
def existing_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path} not found; pass --data PATH to tinyshakespeare.txt")
    return path


def parser(doc: str, benchmark: str, *, data: bool = False) -> argparse.ArgumentParser:
    """A benchmark's arguments, its docstring as the help, with `--out` (the record) and, for the
    benchmarks on Tiny Shakespeare, `--data`."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help=f"the record (default results/{benchmark}.json)")
    if data:
        p.add_argument("--data", type=existing_file, default=str(DEFAULT_DATA),
                       help="tinyshakespeare.txt (default ../shared/data/ beside the repository)")
    return p


def summarise(claim: str, values: list[float], target: float | None = None, lower_is_better: bool = True,
              unit: str = "", **labels) -> dict:
    """One row of a record's summary: the median and range over seeds, and the verdict against a target."""
    row = {"claim": claim, **labels, "median": statistics.median(values), "unit": unit, "min": min(values),
           "max": max(values), "n": len(values)}
    if target is not None:
        met = row["median"] <= target if lower_is_better else row["median"] >= target
        row |= {"target": f"{'<=' if lower_is_better else '>='} {target:g}", "verdict": "met" if met else "MISSED"}
    return row


def summary_line(row: dict) -> str:
    """A summary row as printed."""
    labels = ", ".join(str(v) if k == "run" else f"{k}={v}" for k, v in row.items()
                       if k not in ("claim", "median", "unit", "min", "max", "n", "target", "verdict"))
    u = row["unit"]
    text = (f"{row['claim']}{', ' + labels if labels else ''}: median {row['median']:.4g}{u} "
            f"(min {row['min']:.4g}, max {row['max']:.4g}, n={row['n']})")
    return text + (f" vs target {row['target']}{u}: {row['verdict']}" if "target" in row else "")
