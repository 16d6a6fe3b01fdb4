"""Ablation of `shakespeare-char` (by hand, not in CI): each change undone alone.

Every row trains `shakespeare-char` with one of its choices replaced by the
`nanogpt-cpu` baseline's (AdamW instead of Muon, learned positions instead of
RoPE, ...), for the recipe's own schedule, and prints the training seconds to
val loss 1.8857 (whole validation split, checked every 25 steps), the val loss
at the end, and tokens per second. A slower time or a missed target means the
change helps. Prints a Markdown table for the README.

    python benchmarks/ablation.py [--data ../shared/data/tinyshakespeare.txt] [--runs 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from text import DEFAULT_DATA, TARGET, run

ABLATIONS = [
    ("shakespeare-char, all changes", []),
    ("no smear", ["model.smear=false"]),
    ("AdamW instead of Muon", ["optim.name=adamw"]),
    ("learned positions instead of RoPE", ["model.pos=learned"]),
    ("LayerNorm instead of RMSNorm", ["model.norm=layernorm"]),
    ("GELU MLP instead of ReLU^2", ["model.mlp=gelu"]),
    ("no QK-norm", ["model.qk_norm=false"]),
    ("GPT-2 init instead of zero-init projections", ["model.zero_init_proj=false"]),
    ("tied embeddings", ["model.tie_embeddings=true"]),
    ("cosine schedule instead of warmup-stable-decay", ["optim.schedule=cosine", "optim.min_lr_ratio=0.1"]),
    ("batch 12 instead of 32", ["train.batch_size=12"]),
    ("bf16 autocast instead of fp32", ["dtype=bfloat16"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--runs", type=int, default=1, help="runs of each row (medians reported)")
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"error: {args.data} not found; pass --data PATH to tinyshakespeare.txt")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (name, overrides) in enumerate(ABLATIONS):
            results = [run("shakespeare-char", args.data, Path(tmp) / f"{k}-{i}",
                           ["train.eval_every=25", "data.eval_batches=0", *overrides]) for i in range(args.runs)]
            reached = [s["time_to_target"] for s in results if s["time_to_target"] is not None]
            ttt = statistics.median(reached) if len(reached) == len(results) else None
            loss = statistics.median(s["metrics"]["val_loss"] for s in results)
            tps = statistics.median(s["tokens_per_second"] for s in results)
            rows.append((name, " ".join(overrides) or "-", ttt, loss, tps))
            print(f"{name:<48} time to {TARGET}: {'not reached' if ttt is None else f'{ttt:.1f} s':>11}  "
                  f"val_loss {loss:.4f}  {tps:,.0f} tok/s", flush=True)

    base = rows[0][2]
    print(f"\n| change undone | overrides | time to {TARGET} (s) | vs all changes | val loss at the end "
          "| tokens/s |\n| --- | --- | ---: | ---: | ---: | ---: |")
    for name, overrides, ttt, loss, tps in rows:
        ratio = "-" if ttt is None or base is None else f"{ttt / base:.2f}x"
        print(f"| {name} | `{overrides}` | {'not reached' if ttt is None else f'{ttt:.1f}'} | {ratio} "
              f"| {loss:.4f} | {tps:,.0f} |")


if __name__ == "__main__":
    main()
