"""Identity accuracy of chat pipelines on the val-only questions (for choosing a setting) and on the
test-only ones (for confirming it), 100 items each, beside the constant answer (by hand, not in CI).

    python benchmarks/val_identity.py runs/chat-a runs/chat-b
"""
import sys
from speedrun.chat.engine import load_engine
from speedrun.chat.conversations import make_items
from speedrun.chat.evaluate import evaluate_tasks

for folder in sys.argv[1:]:
    eng = load_engine(folder)
    for split in ("val", "test"):
        items = {"identity": make_items("identity", split, 100, 1337)}
        r = evaluate_tasks(eng, items, progress=False)["tasks"]["identity"]
        print(f"{folder} {split}: identity {r['accuracy']:.0%} (constant {r['constant']:.0%}, margin {100 * (r['accuracy'] - r['constant']):+.0f})", flush=True)
