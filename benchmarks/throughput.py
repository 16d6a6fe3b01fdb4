"""Training throughput at the nanoGPT CPU model shape (by hand, not in CI).

The model shape stays `nanogpt-cpu`'s (4 layers x 128, context 64, character
vocabulary); each row changes one setting from the fp32 AdamW baseline, and the
last row combines the ones that helped. Every variant is timed in this one
process on the same text over the same number of optimizer steps, after warm-up
steps (which also absorb compilation), and the tokens per second are printed
with the ratio to the baseline; target: the fastest settings found at 2x the
baseline's tokens per second.

    python -m benchmarks throughput [--data ../shared/data/tinyshakespeare.txt] [--steps 40] [--repeats 3]
"""

from __future__ import annotations

import json
import statistics

from benchmarks.common import (THROUGHPUT_SPEEDUP_AT_NANOGPT_CPU_SHAPE, parser, print_machine, summarise,
                               summary_line, write_record)
from benchmarks.timing import time_steps

OUR_BLOCK = ["model.pos=rope", "model.norm=rmsnorm", "model.mlp=relu2", "model.qk_norm=true",
             "model.zero_init_proj=true", "model.tie_embeddings=false"]
VARIANTS = [  # (name, overrides, compile), each measured against the baseline on its own
    ("nanogpt-cpu: fp32, AdamW, batch 12", [], False),
    ("our block (RoPE, RMSNorm, QK-norm, ReLU^2)", OUR_BLOCK, False),
    ("ReLU^2 MLP only", ["model.mlp=relu2"], False),
    ("Muon", ["optim.name=muon", "optim.muon_lr=0.05", "optim.lr=5e-3"], False),
    ("bf16 autocast", ["dtype=bfloat16"], False),
    ("batch 64", ["train.batch_size=64"], False),
    ("torch.compile", [], True),
    ("fastest found: ReLU^2 + batch 64 + compile", ["model.mlp=relu2", "train.batch_size=64"], True),
]


def main() -> None:
    from speedrun.config import load_config

    p = parser(__doc__, "throughput", data=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3, help="timings of each variant (median reported)")
    args = p.parse_args()
    print_machine()
    data = [f"data.source={json.dumps(str(args.data))}"]
    baseline, rows = None, []
    print(f"{'variant':<48} {'tokens/s':>10} {'spread':>17} {'vs baseline':>11} {'warm-up s':>9}")
    for name, overrides, compile_model in VARIANTS:
        cfg = load_config("nanogpt-cpu", data + overrides)
        tokens = cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size
        rates, warm = [], []
        for _ in range(args.repeats):
            seconds, warmup_seconds = time_steps(cfg, args.steps, args.warmup, compile_model)
            rates.append(tokens / seconds)
            warm.append(warmup_seconds)
        rate = statistics.median(rates)
        baseline = baseline or rate
        rows.append({"variant": name, "overrides": " ".join(overrides) or None, "compiled": compile_model,
                     "tokens_per_second": rate, "min": min(rates), "max": max(rates),
                     "vs_baseline": rate / baseline, "warmup_seconds": statistics.median(warm)})
        print(f"{name:<48} {rate:>10,.0f} {min(rates):>8,.0f}-{max(rates):<8,.0f} {rate / baseline:>10.2f}x "
              f"{statistics.median(warm):>9.1f}", flush=True)
    fastest = rows[-1]
    summary = [summarise("tokens/s over the fp32 AdamW baseline's", [fastest["vs_baseline"]],
                         THROUGHPUT_SPEEDUP_AT_NANOGPT_CPU_SHAPE, lower_is_better=False, unit="x",
                         run=fastest["variant"])]
    print(summary_line(summary[0]))
    write_record("throughput", {"steps": args.steps, "warmup_steps": args.warmup, "repeats": args.repeats,
                                "variants": rows, "summary": summary}, caches="warm", out=args.out,
                 caches_note="every variant in this one process, after its warm-up steps")


if __name__ == "__main__":
    main()
