"""Speed, round two (by hand, not in CI): the speed issue's four targets beside nanoGPT's CPU recipe.

Every run is a whole command in a fresh process with empty caches (token files,
matmul peak, Inductor), timed by a stopwatch from before the process starts to
after it ends. Losses are compared per character of the same held-out text:
`val_bpb` x ln 2, which for a character model is its val_loss and for a BPE
model (tokenizer learned from the training text only) its loss per token spread
over the characters the tokens stand for. Each round is one seed and runs:

1. `nanogpt-cpu`, the baseline: its stopwatch and val loss;
2. time to nanoGPT's 1.8857 per character, stopping at the first evaluation at
   or below it: `shakespeare-char` (characters), its ablations (without the
   bigram embedding; without smear; with round one's optimizer settings), and
   `shakespeare-char` on a 1024-token BPE vocabulary (no bigram table, which is
   for small vocabularies); the baseline's stopwatch
   over each (target: 10x); with `--round-one-ablations`, also round one's
   ablation, each of the recipe's other choices undone alone (AdamW instead of
   Muon, learned positions instead of RoPE, ...): a lower speedup, or none, means
   the choice helps;
3. loss at the baseline's wall-clock: `shakespeare-char-long`, its ablations
   (smear off; batch 128, the round-one batch) and `shakespeare-bpe`, given the
   baseline's stopwatch, less a reserve for the final evaluation, as their time
   budget (target: val <= 1.55 per character);
4. with `--ten-minutes`: `shakespeare-bpe-long` with a 600 s budget, and the same
   with dropout off, its ablation (target: val <= 1.4697, nanoGPT's A100 result);
   `--ten-minute-recipes` runs others, each a recipe and its overrides in one
   argument ("shakespeare-bpe-long model.dropout=0");
5. with `--chat-base`: the chat pipeline's tokenizer and base stages (target:
   val_bpb <= 1.40 in the stage's 7-minute budget), for the first
   `--chat-base-seeds` seeds; in the first, also round one's 4 x 256 shape with 4
   heads and an MLP x4 in fp32, the ablation of the recipe's 4 x 192, 3 heads, MLP x3.

Runs 2-5 are made with `dtype=auto` (bf16 where this CPU has it natively) and
`dtype=float32` (what a CPU without native bf16 gets); where `auto` picks fp32
on this CPU anyway, one run stands for both, and a row that sets its dtype runs
in that one. Printed: one line per run (the stopwatch, then the run's own setup,
training and evaluation clocks from its summary; the rest of the stopwatch is
imports and exit; its MFU), then per target, recipe and precision the median and
range over seeds, met or missed. The record (results/speed.json) holds every run,
with its time to the target on the training clock (`time_to_target`, evaluation
excluded) beside the stopwatch, and the summary.

    python -m benchmarks speed [--seeds 3] [--targets 1,2] [--ten-minutes] [--chat-base [--chat-base-seeds 1]]
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from benchmarks.common import (CHAT_BASE_VAL_BPB, NANOGPT_CPU_VAL_LOSS, SPEEDUP_TO_NANOGPT_CPU_VAL_LOSS,
                               VAL_LOSS_AT_NANOGPT_CPU_WALLCLOCK, VAL_LOSS_IN_TEN_MINUTES, parser, print_machine,
                               summarise, summary_line, write_record)
from benchmarks.timing import COLD_NOTE, cold_command, cold_run, resolves_to_fp32

PRECISIONS = ("auto", "float32")
# A run's command ends 1.6-1.9 s after its time budget (final evaluation and exit, measured on
# shakespeare-char-long and shakespeare-bpe); 4 s keeps it inside the baseline's wall-clock.
RESERVE_SECONDS = 4.0
BPE = ["data.tokenizer=bpe", "data.vocab_size=1024"]
TO_NANOGPT_LOSS = f"train.target_val_loss={NANOGPT_CPU_VAL_LOSS}"
TO_TARGET = {"characters": ("shakespeare-char", [TO_NANOGPT_LOSS]),
             "characters, ablation: bigram off": ("shakespeare-char", [TO_NANOGPT_LOSS, "model.bigram=false"]),
             "characters, ablation: smear off": ("shakespeare-char", [TO_NANOGPT_LOSS, "model.smear=false"]),
             "characters, ablation: round one's optimizer": ("shakespeare-char", [
                 TO_NANOGPT_LOSS, "optim.lr=5e-3", "optim.muon_lr=0.05", "optim.warmdown_fraction=0.4"]),
             "BPE 1024": ("shakespeare-char", [*BPE, "model.bigram=false", "train.eval_every=25", "data.eval_batches=0",
                                               f"train.target_val_bpb={NANOGPT_CPU_VAL_LOSS / math.log(2):.4f}"])}
# Round one's ablation (docs/history.md): each of shakespeare-char's choices replaced by nanogpt-cpu's.
ROUND_ONE_ABLATIONS = {
    "AdamW instead of Muon": ["optim.name=adamw"],
    "learned positions instead of RoPE": ["model.pos=learned"],
    "LayerNorm instead of RMSNorm": ["model.norm=layernorm"],
    "GELU MLP instead of ReLU^2": ["model.mlp=gelu"],
    "no QK-norm": ["model.qk_norm=false"],
    "GPT-2 init instead of zero-init projections": ["model.zero_init_proj=false"],
    "tied embeddings": ["model.tie_embeddings=true"],
    "cosine schedule instead of warmup-stable-decay": ["optim.schedule=cosine", "optim.min_lr_ratio=0.1"],
    "batch 12 instead of 32": ["train.batch_size=12"],
    "bf16 autocast instead of fp32": ["dtype=bfloat16"],
}
SAME_WALL_RECIPES = ("shakespeare-char-long", "shakespeare-char-long model.smear=false",  # the recipe, its ablations
                     "shakespeare-char-long train.batch_size=128",
                     "shakespeare-char-long model.n_head=4 model.mlp_ratio=4", "shakespeare-bpe")
TEN_MINUTE_RECIPES = ("shakespeare-bpe-long", "shakespeare-bpe-long model.dropout=0")  # the recipe, its ablation
# The claims of the summary, each with its target, whether lower is better, and its unit.
CLAIMS = {"1": (f"1. to {NANOGPT_CPU_VAL_LOSS}: baseline's stopwatch / ours", SPEEDUP_TO_NANOGPT_CPU_VAL_LOSS, False,
                "x"),
          "2": ("2. val per char at nanoGPT's wall-clock", VAL_LOSS_AT_NANOGPT_CPU_WALLCLOCK, True, ""),
          "3": ("3. val per char in ten minutes", VAL_LOSS_IN_TEN_MINUTES, True, ""),
          "4": ("4. val_bpb", CHAT_BASE_VAL_BPB, True, "")}


def per_char(s: dict, split: str = "val") -> float:
    """Nats per character of the split's text (ASCII: a byte is a character)."""
    return s["metrics"][f"{split}_bpb"] * math.log(2)


def split_spec(spec: str) -> tuple[str, list[str]]:
    """"recipe key=value ..." as the recipe and its overrides."""
    recipe, *overrides = spec.split()
    return recipe, overrides


# The recipe in every precision `auto` can pick; then its ablation, round one's shape, in fp32 (where
# it missed the target; its bf16 figure is in results/speed-session6.json), first seed only.
CHAT_BASE_RUNS = {"chat-base": None,
                  "chat-base base.model.n_embd=256 base.model.n_head=4 base.model.mlp_ratio=4": ["float32"]}


def precisions(recipe: str, overrides: list[str] = ()) -> list[str]:
    """The precisions a recipe is run in: the one its overrides set, or one when `auto` picks fp32
    here anyway."""
    forced = [o.split("=", 1)[1] for o in overrides if o.startswith("dtype=")]
    if forced:
        return forced[-1:]
    return ["float32"] if resolves_to_fp32(recipe, overrides) else list(PRECISIONS)


def chat_precisions(spec: str) -> list[str]:
    """The same for a chat-pipeline spec, whose base-stage overrides start with `base.`."""
    return precisions("chat-base", [o.removeprefix("base.") for o in split_spec(spec)[1] if o.startswith("base.")])


def chat_base_run(out: Path, dtype: str, seed: int, extra: list[str]) -> dict:
    """The chat pipeline's tokenizer and base stages, cold; val_bpb and the stopwatch."""
    return cold_command(["chat-pipeline", "--out", str(out), "--quiet", "--stage", "tokenizer", "--stage", "base",
                         f"base.dtype={dtype}", f"base.train.seed={seed}", *extra], out, out / "base")


def print_header() -> None:
    """The column names of run_row's lines."""
    print(f"{'run':<66} {'seed':>4} {'stopwatch':>9} {'setup':>6} {'train':>6} {'eval':>6} {'steps':>6} "
          f"{'tok/s':>9} {'comp_s':>6} {'MFU':>6} {'dtype':>9}  figure", flush=True)


def run_row(label: str, dtype: str, seed: int, s: dict, figure: str, **figures) -> dict:
    """One run as printed (a line) and as recorded (a row: the clocks, then its figures)."""
    label = f"{label} dtype={dtype}"
    clocks = " ".join(f"{s[k]:>6.1f}" for k in ("setup_seconds", "train_seconds", "eval_seconds"))
    print(f"{label:<66} {seed:>4} {s['stopwatch']:>9.1f} {clocks} {s['steps']:>6} {s['tokens_per_second']:>9,.0f} "
          f"{s['compile_seconds']:>6.1f} {format(s['mfu'] or 0, '.1%'):>6} {s['dtype']:>9}  {figure}", flush=True)
    return {"run": label, "seed": seed, "stopwatch_seconds": round(s["stopwatch"], 2),
            **{k: s[k] for k in ("setup_seconds", "train_seconds", "eval_seconds", "steps", "tokens_per_second",
                                 "compile_seconds", "mfu", "dtype")}, **figures}


def main() -> None:
    p = parser(__doc__, "speed", data=True)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--reserve", type=float, default=RESERVE_SECONDS,
                   help="seconds of the baseline's wall-clock kept for the final evaluation and exit")
    p.add_argument("--targets", default="1,2", help="which of targets 1 (time to 1.8857) and 2 (loss at "
                   "nanoGPT's wall-clock) to run; the baseline always runs")
    p.add_argument("--round-one-ablations", action="store_true",
                   help="target 1 also with each of round one's ablations (one more run each per seed)")
    p.add_argument("--same-wall-recipes", nargs="+", default=list(SAME_WALL_RECIPES),
                   help='target 2: each a recipe and its overrides, quoted as one argument')
    p.add_argument("--ten-minutes", action="store_true", help="also the 10-minute target (10 min per run)")
    p.add_argument("--ten-minute-recipes", nargs="+", default=list(TEN_MINUTE_RECIPES),
                   help='each a recipe and its overrides, quoted as one argument')
    p.add_argument("--chat-base", action="store_true", help="also the chat base model (7 min per run)")
    p.add_argument("--chat-base-seeds", type=int, default=0, help="the chat base model for this many seeds "
                   "(default: all)")
    args = p.parse_args()
    to_target = dict(TO_TARGET)
    if args.round_one_ablations:
        to_target |= {f"characters, ablation: {name}": ("shakespeare-char", [TO_NANOGPT_LOSS, *overrides])
                      for name, overrides in ROUND_ONE_ABLATIONS.items()}
    print_machine()
    print_header()

    results: dict[tuple[str, str, str], list[float]] = {}
    rows, base_walls, base_vals = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(1, args.seeds + 1):
            def run(recipe: str, dtype: str, extra: list[str], tag: str) -> dict:
                return cold_run(recipe, args.data, Path(tmp) / f"{recipe}-{tag}-{dtype}-{seed}".replace(" ", "-"),
                                [f"train.seed={seed}", f"dtype={dtype}", *extra])

            base = cold_run("nanogpt-cpu", args.data, Path(tmp) / f"base-{seed}", [f"train.seed={seed}"])
            base_walls.append(base["stopwatch"])
            base_vals.append(base["metrics"]["val_loss"])
            rows.append(run_row("nanogpt-cpu", "float32", seed, base, f"val {base['metrics']['val_loss']:.4f}",
                                val_loss=base["metrics"]["val_loss"]))
            for label, (recipe, extra) in (to_target.items() if "1" in args.targets else ()):
                for dtype in precisions(recipe, extra):
                    s = run(recipe, dtype, extra, label)
                    reached = s["time_to_target"] is not None
                    speedup = base["stopwatch"] / s["stopwatch"] if reached else 0.0
                    results.setdefault(("1", label, dtype), []).append(speedup)
                    rows.append(run_row(
                        f"{recipe} ({label}) to {NANOGPT_CPU_VAL_LOSS}", dtype, seed, s,
                        f"{'reached' if reached else 'NOT reached'} at step {s['steps']}, {per_char(s):.4f}/char, "
                        f"{speedup:.2f}x", reached_at_step=s["steps"] if reached else None, val_per_char=per_char(s),
                        speedup_x=speedup, time_to_target=s["time_to_target"]))
            budget = base["stopwatch"] - args.reserve
            for k, spec in enumerate(args.same_wall_recipes if "2" in args.targets else ()):
                recipe, extra = split_spec(spec)
                for dtype in precisions(recipe, extra):
                    s = run(recipe, dtype, [f"train.time_budget={budget:.1f}", *extra], f"same-wall{k}")
                    results.setdefault(("2", spec, dtype), []).append(per_char(s))
                    rows.append(run_row(
                        f"{spec} {budget:.0f} s", dtype, seed, s,
                        f"val {per_char(s):.4f}/char (test {per_char(s, 'test'):.4f}), "
                        f"{s['stopwatch'] / base['stopwatch']:.2f}x its wall", val_per_char=per_char(s),
                        test_per_char=per_char(s, "test"),
                        fraction_of_baseline_wall=s["stopwatch"] / base["stopwatch"]))
            if args.ten_minutes:
                for k, spec in enumerate(args.ten_minute_recipes):
                    recipe, extra = split_spec(spec)
                    for dtype in precisions(recipe, extra):
                        s = run(recipe, dtype, ["train.time_budget=600", *extra], f"ten{k}")
                        results.setdefault(("3", spec, dtype), []).append(per_char(s))
                        rows.append(run_row(f"{spec} 600 s", dtype, seed, s,
                                            f"val {per_char(s):.4f}/char (test {per_char(s, 'test'):.4f})",
                                            val_per_char=per_char(s), test_per_char=per_char(s, "test")))
            if args.chat_base and seed <= (args.chat_base_seeds or args.seeds):
                for k, (spec, dtypes) in enumerate(list(CHAT_BASE_RUNS.items())[:None if seed == 1 else 1]):
                    for dtype in dtypes or chat_precisions(spec):
                        s = chat_base_run(Path(tmp) / f"chat{k}-{dtype}-{seed}", dtype, seed, split_spec(spec)[1])
                        results.setdefault(("4", spec, dtype), []).append(s["metrics"]["val_bpb"])
                        rows.append(run_row(spec, dtype, seed, s, f"val_bpb {s['metrics']['val_bpb']:.4f}",
                                            val_bpb=s["metrics"]["val_bpb"]))
            summary = summarised(results, base_walls, base_vals)
            write_record("speed", {"runs": rows, "summary": summary}, caches="cold", out=args.out,
                         seeds=list(range(1, seed + 1)), caches_note=COLD_NOTE)  # each round kept as it ends
    print()
    for row in summary:
        print(summary_line(row))


def summarised(results: dict[tuple[str, str, str], list[float]], base_walls: list[float],
               base_vals: list[float]) -> list[dict]:
    """Per target, recipe and precision: the median and range over the seeds so far, met or missed."""
    summary = [summarise("nanogpt-cpu whole command", base_walls, unit="s"),
               summarise("nanogpt-cpu val_loss", base_vals)]
    for (target, what, dtype), values in results.items():
        claim, value, lower, unit = CLAIMS[target]
        summary.append(summarise(claim, values, value, lower, unit, run=what, dtype=dtype))
    return summary


if __name__ == "__main__":
    main()
