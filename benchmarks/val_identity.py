"""Identity accuracy of chat pipelines on the val-only questions, for choosing a setting (by hand, not in CI).

A tuning tool: it scores 100 items of the validation questions only, beside the constant answer,
and never the test-only ones (issue 26: a tuning tool shows no test figure; the chosen setting is
confirmed on test by the pipeline's own evaluation, once).

    python -m benchmarks val_identity runs/chat-a runs/chat-b [--out results/val_identity.json]
"""

from __future__ import annotations

from benchmarks.common import parser, write_record

SPLIT, ITEMS, SEED = "val", 100, 1337


def main() -> None:
    from speedrun.chat.conversations import make_items
    from speedrun.chat.evaluate import evaluate_tasks
    from speedrun.loading import load_engine

    p = parser(__doc__, "val_identity")
    p.add_argument("folders", nargs="+", help="chat pipeline folders")
    args = p.parse_args()
    rows = []
    for folder in args.folders:
        items = {"identity": make_items("identity", SPLIT, ITEMS, SEED)}
        r = evaluate_tasks(load_engine(folder), items, progress=False)["tasks"]["identity"]
        rows.append({"folder": folder, "split": SPLIT, "items": ITEMS, "accuracy": r["accuracy"],
                     "constant": r["constant"], "margin_points": 100 * (r["accuracy"] - r["constant"])})
        print(f"{folder} {SPLIT}: identity {r['accuracy']:.0%} (constant {r['constant']:.0%}, "
              f"margin {100 * (r['accuracy'] - r['constant']):+.0f})", flush=True)
    write_record("val_identity", {"seed": SEED, "pipelines": rows}, caches="warm", out=args.out,
                 caches_note="evaluation only: trained models, loaded from their folders")


if __name__ == "__main__":
    main()
