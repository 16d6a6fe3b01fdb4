"""Muon's cost per token against AdamW's, in both precisions (by hand, not in CI).

At the `shakespeare-char-long` (2 x 256, context 128) and `chat-base` (4 x 256,
context 256) shapes, times eager optimizer steps with AdamW and with Muon, in
`dtype=auto` (bf16 where this CPU runs it natively) and with `dtype=float32`
forced (what a CPU without native bf16 gets). The two optimizers alternate,
`--repeats` times each; the medians and their ratio are printed. Target: Muon
within 15% of AdamW's tokens per second everywhere.

    python -m benchmarks muon [--data ../shared/data/tinyshakespeare.txt] [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import dataclasses
import json
import statistics

from benchmarks.common import MUON_OVER_ADAMW_TOKENS_PER_SECOND, parser, print_machine, write_record
from benchmarks.timing import time_steps

SHAPES = {  # recipe and the overrides that make it run on the benchmark's text
    "shakespeare-char-long (2 x 256, context 128)": ("shakespeare-char-long", []),
    "chat-base (4 x 256, context 256, BPE 2048)": ("chat-base", ["data.vocab_size=2048"]),
}
OPTIMIZERS = {"adamw": ["optim.name=adamw"], "muon": ["optim.name=muon"]}


def main() -> None:
    from speedrun.config import load_config
    from speedrun.run import Run

    p = parser(__doc__, "muon", data=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print_machine()
    data = [f"data.source={json.dumps(str(args.data))}", "train.compile=false", "train.time_budget=0"]
    rows = []
    print(f"{'shape':<46} {'dtype':>8} {'AdamW tok/s':>12} {'Muon tok/s':>11} {'Muon/AdamW':>10}")
    for shape, (recipe, extra) in SHAPES.items():
        for dtype in ("auto", "float32"):
            rates = {name: [] for name in OPTIMIZERS}
            for _ in range(args.repeats):
                for name, overrides in OPTIMIZERS.items():
                    cfg = load_config(recipe, data + extra + overrides + [f"dtype={dtype}"])
                    tokens = cfg.train.batch_size * cfg.model.block_size
                    rates[name].append(tokens / time_steps(cfg, args.steps, args.warmup)[0])
            resolved = Run(dataclasses.replace(cfg, device="cpu")).runtime().dtype_name
            adamw, muon = (statistics.median(rates[n]) for n in OPTIMIZERS)
            met = muon / adamw >= MUON_OVER_ADAMW_TOKENS_PER_SECOND
            rows.append({"shape": shape, "dtype": dtype, "trained_in": resolved,
                         "adamw_tokens_per_second": adamw, "muon_tokens_per_second": muon,
                         "muon_over_adamw": muon / adamw, "adamw_runs": rates["adamw"], "muon_runs": rates["muon"],
                         "target": f">= {MUON_OVER_ADAMW_TOKENS_PER_SECOND:g}", "verdict": "met" if met else "MISSED"})
            print(f"{shape:<46} {dtype + '=' + resolved:>8} {adamw:>12,.0f} {muon:>11,.0f} "
                  f"{muon / adamw:>9.2f}x  {'met' if met else 'MISSED'}", flush=True)
    write_record("muon", {"steps": args.steps, "warmup_steps": args.warmup, "repeats": args.repeats,
                          "shapes": rows}, caches="warm", out=args.out,
                 caches_note="eager steps in this one process, after warm-up steps; the data prepared once")


if __name__ == "__main__":
    main()
