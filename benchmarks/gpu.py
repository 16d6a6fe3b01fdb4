"""The GPU check and the GPU figures, by hand on one GPU, not in CI: under 8 minutes on one H100.

1. `pytest -q -m cuda tests/test_cuda.py`: passed, failed and skipped counts and the output's tail.
2. `speedrun train gpt2-124m` for 60 s of wall-clock, compiled, in bf16, on an English-like JSONL
   corpus the script generates (the data benchmark's `generate`: no network needed) and prepares
   first with `speedrun prepare`, so that the budget goes to compiling and training, not to
   tokenizing: tokens/s, MFU against the GPU's dense bf16 peak from NVIDIA's data sheet (and
   against the matmul peak the run measured), and the GPU's peak memory, polled with nvidia-smi.
3. `speedrun train shakespeare-char-long` in bf16 for 60 s (its 10 minutes do not fit): val loss
   and wall-clock beside nanoGPT's published GPU figure.

Every step has its own timeout, cut to what is left of the 8 minutes; a step that fails or
times out is recorded and the next one runs. The record (results/gpu.json) is written after
every step, so a run cut short still leaves one. Text runs here sample no text
(data.sample_tokens=0): sampling is not what is measured, and tests/test_cuda.py checks it.
speedrun must be importable: installed (`pip install -e .`), or `PYTHONPATH=src` on a copy of the tree.

    python -m benchmarks gpu [--shakespeare PATH] [--recipe gpt2-124m] [--out results/gpu.json]
    python -m benchmarks gpu --dry-run --out /tmp/gpu-dry.json   # the same steps, tiny, on a CPU
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.common import DEFAULT_DATA, NANOGPT_A100_VAL_LOSS, ROOT, machine, parser, print_machine, write_record
from benchmarks.data import generate
from speedrun.rundir import RunDir

DEADLINE_SECONDS = 470  # every step ends by then: the whole stays under 8 minutes
TIMEOUTS = {"tests": 170, "prepare": 80}  # seconds; a training step gets its budget plus its slack
TRAIN_SLACK_SECONDS = {"gpt2": 45, "shakespeare": 25}  # the final evaluation and checkpoints
MIN_STEP_SECONDS = 10
CACHES_NOTE = ("the workdir's SPEEDRUN_CACHE, corpus and prepared dataset, kept between runs of the benchmark "
               "(prepare's prepared_before); Inductor's cache as it is")
# Dense (not 2:4 sparse) bf16 tensor-core peaks from NVIDIA's data sheets, by a part of the name
# torch.cuda.get_device_name gives; the first match wins, so each variant comes before its family.
DENSE_BF16_PEAKS = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200 NVL", 835e12),
                    ("H200", 989e12), ("A100", 312e12)]
NANOGPT_GPU = {"val_loss": NANOGPT_A100_VAL_LOSS, "wall_seconds": 180, "gpu": "A100",
               "model": "6 layers x 384, 6 heads, context 256, 5,000 iterations",
               "source": "nanoGPT's README (its published figure, not measured here: 'about 3 minutes')"}
# beside the repository (this machine's layout), else inside it (a GPU machine's copy of the tree)
SHAKESPEARE = [DEFAULT_DATA, ROOT / "shared" / "data" / "tinyshakespeare.txt"]
GPU_RUN = ["device=cuda", "dtype=bfloat16"]
CPU_RUN = ["device=cpu", "dtype=float32"]
# --dry-run: a model small enough for a 5-second budget on a CPU, where a cold compile alone takes longer,
# and evaluations of a few thousand tokens (the whole of Tiny Shakespeare's val split takes 20 s there)
DRY_EVAL = ["data.eval_tokens=4096"]
DRY_MODEL = ["model.n_layer=1", "model.n_head=2", "model.n_embd=64", "model.block_size=64", "train.batch_size=8",
             "train.batch_tokens=0", "train.compile=false", *DRY_EVAL]
SUMMARY_KEYS = ("steps", "stopped_by", "params", "tokens", "tokens_per_second", "flops_per_token", "compiled",
                "compile_seconds", "setup_seconds", "train_seconds", "eval_seconds", "checkpoint_seconds",
                "wall_seconds", "device", "dtype")


def dense_bf16_peak(gpu: str | None) -> tuple[float | None, str | None]:
    for part, flops in DENSE_BF16_PEAKS:
        if gpu and part in gpu:
            return flops, f"NVIDIA data sheet, {part}: {flops / 1e12:,.0f} TFLOP/s dense bf16"
    return None, None


def speedrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "speedrun", *args]


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


class GpuMemory:
    """The GPU's used memory, polled with nvidia-smi in a thread while a step runs: the whole GPU
    (every process, the CUDA context and the caching allocator's reserve), since
    torch.cuda.max_memory_allocated can only be read inside the training process."""

    SOURCE = "nvidia-smi --query-gpu=memory.used polled every 0.5 s (the whole GPU, every process on it)"

    def __init__(self):
        self.before = self.peak = self.read()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)

    @staticmethod
    def read() -> float | None:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                  "-i", "0"], capture_output=True, text=True, timeout=10).stdout
            return float(out.split()[0])
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None

    def poll(self) -> None:
        while not self.done.wait(0.5):
            used = self.read()
            if used is not None:
                self.peak = max(self.peak or 0.0, used)

    def __enter__(self):
        if self.before is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()

    def as_dict(self) -> dict:
        if self.before is None:
            return {"peak_gpu_memory_mib": None, "peak_gpu_memory_source": "nvidia-smi unavailable"}
        return {"peak_gpu_memory_mib": self.peak, "gpu_memory_before_mib": self.before,
                "peak_gpu_memory_source": self.SOURCE}


class Bench:
    """The steps, their shared settings and the deadline they all keep to."""

    def __init__(self, args):
        self.args, self.dry = args, args.dry_run
        self.deadline = time.monotonic() + DEADLINE_SECONDS
        self.workdir = args.workdir
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "SPEEDRUN_CACHE": str(self.workdir / "cache")}
        self.device_run = CPU_RUN if self.dry else GPU_RUN

    def run(self, name: str, cmd: list[str], timeout: float) -> dict:
        """One command in its own process group, its output in logs/NAME.log, killed (with its
        children) at the timeout or the benchmark's deadline, whichever comes first."""
        timeout = min(timeout, self.deadline - time.monotonic())
        result = {"command": shlex.join(["python", *cmd[1:]]), "timeout_seconds": round(timeout)}
        if timeout < MIN_STEP_SECONDS:
            return {**result, "status": "skipped", "reason": "no time left of the benchmark's 8 minutes"}
        log = self.workdir / "logs" / f"{name}.log"
        t0 = time.perf_counter()
        with log.open("w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
                                    start_new_session=True)
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):  # gone between the timeout and the kill
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                code = None
        status = "timed_out" if code is None else "ok" if code == 0 else "failed"
        return {**result, "status": status, "returncode": code, "seconds": round(time.perf_counter() - t0, 1),
                "output_tail": tail(log)}

    # --- the steps ---------------------------------------------------------------
    def tests(self) -> dict:
        r = self.run("tests", [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py"],
                     TIMEOUTS["tests"])
        log = self.workdir / "logs" / "tests.log"
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()] if log.exists() else []
        if lines and r["status"] != "timed_out":
            r["counts"] = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)",
                                                            lines[-1])}
            r["failures"] = [x for x in lines if x.startswith(("FAILED", "ERROR"))]
        return r

    def prepare(self) -> tuple[dict, Path]:
        """The corpus, generated once per size, and its tokens, prepared once for the recipe."""
        mb, recipe = self.args.corpus_mb, self.args.recipe
        corpus = self.workdir / f"corpus-{mb}mb.jsonl"
        prepared = self.workdir / f"prepared-{recipe}-{mb}mb"
        t0 = time.perf_counter()
        try:
            corpus_info = generate(corpus, mb)
        except Exception as e:  # a missing english-words package, a full disk: recorded, and step 2 skipped
            return {"status": "failed", "error": f"generating the corpus: {type(e).__name__}: {e}"}, prepared
        corpus_seconds = time.perf_counter() - t0  # generated, or found from an earlier run
        was_prepared = (prepared / "manifest.json").is_file()
        r = self.run("prepare", speedrun("prepare", str(corpus), recipe, "--out", str(prepared), "--quiet"),
                     TIMEOUTS["prepare"] - corpus_seconds)
        r.update(corpus=corpus_info | {"path": str(corpus)}, corpus_seconds=round(corpus_seconds, 1),
                 prepared_before=was_prepared)
        if (prepared / "manifest.json").is_file():
            manifest = json.loads((prepared / "manifest.json").read_text())
            r["prepared"] = {split: {k: v for k, v in info.items() if k != "shards"} | {"shards": len(info["shards"])}
                             for split, info in manifest["splits"].items()}
        return r, prepared

    def gpt2(self, prepared: Path) -> dict:
        out = self.workdir / "runs" / "gpt2"
        shutil.rmtree(out, ignore_errors=True)
        budget = self.args.gpt2_budget
        overrides = [f"train.time_budget={budget}", *self.device_run, "data.sample_tokens=0",
                     *(DRY_MODEL if self.dry else ["train.compile=true"])]
        with GpuMemory() as memory:
            r = self.run("gpt2", speedrun("train", self.args.recipe, "--data", str(prepared), *overrides,
                                          "--out", str(out), "--quiet"), budget + TRAIN_SLACK_SECONDS["gpt2"])
        r.update(memory.as_dict())
        if not RunDir(out).has_summary():
            return r
        s = RunDir(out).read_summary()
        peak, source = dense_bf16_peak(machine()["gpu"])
        r.update({k: s.get(k) for k in SUMMARY_KEYS})
        r.update(val_loss=s["metrics"].get("val_loss"), mfu_vs_measured_peak=s.get("mfu"),
                 measured_matmul_peak_flops=s.get("peak_flops"), dense_bf16_peak_flops=peak,
                 dense_bf16_peak_source=source,
                 mfu_vs_dense_bf16_peak=s["tokens_per_second"] * s["flops_per_token"] / peak if peak else None)
        r.update({k: v for k, v in s.items() if "memory" in k})  # the trainer's own, should it record any
        return r

    def shakespeare(self) -> dict:
        path = self.args.shakespeare or next((p for p in SHAKESPEARE if p.is_file()), SHAKESPEARE[0])
        if not path.is_file():
            return {"status": "failed", "error": f"Tiny Shakespeare not found at {path}; give --shakespeare PATH"}
        out = self.workdir / "runs" / "shakespeare"
        shutil.rmtree(out, ignore_errors=True)
        budget = self.args.shakespeare_budget
        r = self.run("shakespeare", speedrun("train", "shakespeare-char-long", "--data", str(path), *self.device_run,
                                             f"train.time_budget={budget}", "data.sample_tokens=0",
                                             *(DRY_EVAL if self.dry else []), "--out", str(out), "--quiet"),
                     budget + TRAIN_SLACK_SECONDS["shakespeare"])
        r["reference"] = NANOGPT_GPU
        r["split_note"] = ("speedrun's val is the first half of nanoGPT's 10% val split and test the second: "
                           "comparable with nanoGPT's val loss, not the same text")
        if RunDir(out).has_summary():
            s = RunDir(out).read_summary()
            m = s["metrics"]
            r.update({k: s.get(k) for k in SUMMARY_KEYS})
            r.update(val_loss=m.get("val_loss"), test_loss=m.get("test_loss"), val_bpb=m.get("val_bpb"))
        return r


def say(name: str, r: dict, *keys: str) -> None:
    shown = ", ".join(f"{k} {r[k]:,.4g}" if isinstance(r[k], float) else f"{k} {r[k]}"
                      for k in keys if r.get(k) is not None)
    print(f"{name}: {r['status']}" + (f" in {r['seconds']}s" if "seconds" in r else "")
          + (f"; {shown}" if shown else "") + (f" ({r['error']})" if "error" in r else ""), flush=True)


def gpu_details() -> dict:
    """What the record's machine line leaves out: how many GPUs, the first one's memory, CUDA's version."""
    import torch

    p = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None
    return {"gpu_count": torch.cuda.device_count(), "gpu_memory_bytes": p.total_memory if p else None,
            "cuda": torch.version.cuda}


def main() -> None:
    p = parser(__doc__, "gpu")
    p.add_argument("--dry-run", action="store_true", help="every step on the CPU, tiny, to check the script")
    p.add_argument("--recipe", default="gpt2-124m", help="the recipe of step 2 (default gpt2-124m)")
    p.add_argument("--shakespeare", type=Path, help="tinyshakespeare.txt (default ../shared/data/ beside the "
                                                    "repository, else shared/data/ inside it)")
    p.add_argument("--corpus-mb", type=int, help="step 2's generated corpus (default 200 MB; 3 with --dry-run)")
    p.add_argument("--gpt2-budget", type=float, help="step 2's train.time_budget (default 60 s; 5 with --dry-run)")
    p.add_argument("--shakespeare-budget", type=float, help="step 3's train.time_budget (default 60 s; 5 with "
                                                            "--dry-run)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/speedrun-gpu-bench"))
    a = p.parse_args()
    a.corpus_mb = a.corpus_mb or (3 if a.dry_run else 200)
    a.gpt2_budget = a.gpt2_budget or (5.0 if a.dry_run else 60.0)
    a.shakespeare_budget = a.shakespeare_budget or (5.0 if a.dry_run else 60.0)
    if a.dry_run and a.out is None:
        a.out = a.workdir / "gpu-dry.json"
    bench = Bench(a)
    print_machine()
    details = gpu_details()
    print(f"gpu: {machine()['gpu'] or 'none'}, {details}", flush=True)
    record = {"dry_run": a.dry_run, **details, "steps": {}}

    def write() -> None:
        write_record("gpu", record, caches="warm", out=a.out, caches_note=CACHES_NOTE)

    steps = record["steps"]
    steps["tests"] = bench.tests()
    write()
    say("tests", steps["tests"], "counts")
    steps["prepare"], prepared = bench.prepare()
    write()
    say("prepare", steps["prepare"], "corpus_seconds", "prepared_before")
    if steps["prepare"]["status"] == "ok":
        steps["gpt2"] = bench.gpt2(prepared)
    else:
        steps["gpt2"] = {"status": "skipped", "reason": "the corpus was not prepared"}
    write()
    say(a.recipe, steps["gpt2"], "steps", "tokens_per_second", "mfu_vs_dense_bf16_peak", "mfu_vs_measured_peak",
        "peak_gpu_memory_mib", "compile_seconds")
    steps["shakespeare"] = bench.shakespeare()
    write()
    say("shakespeare-char-long", steps["shakespeare"], "val_loss", "wall_seconds", "steps")


if __name__ == "__main__":
    main()
