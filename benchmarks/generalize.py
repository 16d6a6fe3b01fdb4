"""Figures that travel (by hand, not in CI): the text recipes beside nanogpt-cpu on held-out prose corpora.

Every recipe was tuned on Tiny Shakespeare. The held-out corpora below are used
only to check it: a figure on them must never feed back into a recipe, and no
recipe may special-case a corpus. Each is English prose from a pinned Debian
package (benchmarks/corpora.py fetches it with `apt-get download`, no root, and
caches it in ~/.cache/speedrun-bench/corpora, or --corpus-cache):

- austen: r-cran-janeaustenr 1.0.0-1, Pride and Prejudice then Persuasion
  (Project Gutenberg's text), 1.15 M characters, 77 distinct: literary narrative
  and dialogue, the corpus nearest Shakespeare in kind, two centuries later;
- jargon: jargon-text 4.4.7-4.1, the Jargon File, 1.49 M characters, 96 distinct:
  a glossary of hacker slang whose entries are short essays, after chapters on
  hacker culture and style;
- fortunes: fortunes 1:1.99.1-7.3, fortune-mod's quotations and anecdotes (every
  file but ascii-art, which is drawings), 2.42 M characters, 96 distinct: short
  texts of every register, attributions included;
- handbook: debian-handbook 11.20220922, The Debian Administrator's Handbook in
  English HTML, its <pre> command and file listings left out, 1.04 M characters,
  96 distinct: technical prose that explains, not code.

The extraction rule, the same for every held-out corpus (corpora.normalise):
HTML to its body text (no head, scripts, styles or <pre>; a line break at each
block element), gzip decompressed, fortune's % separators made blank lines, the
R package's character vectors read from its .rdb; then typographic quotes and
dashes as ASCII ones, NFKD, everything but printable ASCII, tab and newline
dropped, each line stripped with runs of spaces made one, runs of blank lines
made one. So a corpus has at most 96 distinct characters (Tiny Shakespeare: 65),
and a byte is a character, as the loss per character (val_bpb x ln 2) assumes.
The record holds each corpus's package, version, size and the sha256 of its text.

Each round is one seed and, for each corpus (Tiny Shakespeare first), runs as
speed does, every command whole and cold in a fresh process:

1. `nanogpt-cpu`: its stopwatch and final val loss L on that corpus;
2. `shakespeare-char` with `train.target_val_loss=L`, stopping at the first
   evaluation at or below it, in each precision `auto` can pick here: the
   baseline's stopwatch over its own (0 if it never gets there), and its step
   (target: >= 10x on every held-out corpus, >= 12x on Tiny Shakespeare on the
   slowest CPU measured; medians of the seeds);
3. with `--same-wall`: `shakespeare-char-long` and `shakespeare-bpe`, given the
   baseline's stopwatch less speed's reserve as their time budget: their val loss
   per character beside the baseline's.

Printed: one line per run (as speed prints it), then per corpus the median and
range over seeds, met or missed. The record (results/generalize.json) is
rewritten after every round. `--override KEY=VALUE` goes to every run, to make a
smoke test short; such a record measures nothing.

    python -m benchmarks generalize --same-wall       # every corpus, 3 seeds (--seeds N)
    python -m benchmarks generalize --corpora tinyshakespeare,austen,jargon,fortunes,handbook
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.common import (GENERALIZE_SPEEDUP, TINY_SHAKESPEARE_SPEEDUP_SLOWEST_CPU, parser, print_machine,
                               summarise, summary_line, write_record)
from benchmarks.corpora import CACHE, CORPORA, facts, prepare
from benchmarks.speed import RESERVE_SECONDS, per_char, precisions, print_header, run_row
from benchmarks.timing import COLD_NOTE, cold_run

TUNING = "tinyshakespeare"  # the corpus every recipe was tuned on
BASELINE, OURS = "nanogpt-cpu", "shakespeare-char"
SAME_WALL_RECIPES = ("shakespeare-char-long", "shakespeare-bpe")
SPEEDUP = f"{OURS} to {BASELINE}'s val loss: baseline's stopwatch / ours"
SAME_WALL = f"val per char at {BASELINE}'s wall-clock"
UNITS = {f"{BASELINE} whole command": "s", f"{BASELINE} val_loss": "", SPEEDUP: "x", SAME_WALL: ""}


def speedup_target(corpus: str) -> float:
    return TINY_SHAKESPEARE_SPEEDUP_SLOWEST_CPU if corpus == TUNING else GENERALIZE_SPEEDUP


def corpus_names(value: str) -> list[str]:
    """A comma-separated list of corpora, Tiny Shakespeare first where named."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n != TUNING and n not in CORPORA]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"no corpus {', '.join(unknown) or value!r}; "
                                         f"choose from {', '.join([TUNING, *CORPORA])}")
    return sorted(dict.fromkeys(names), key=lambda n: n != TUNING)


def load_corpora(names: list[str], data: Path, cache: Path) -> list[dict]:
    """Each corpus's path and what identifies it; the held-out ones fetched and extracted."""
    found = []
    for name in names:
        if name == TUNING:
            found.append({"name": TUNING, "package": None, "version": None, "what": "Tiny Shakespeare, the "
                          "tuning corpus", "path": str(data), **facts(data.read_text(encoding="utf-8"))})
        else:
            found.append(prepare(CORPORA[name], cache))
        print(f"corpus {name}: {found[-1]['chars']:,} chars, {found[-1]['distinct_chars']} distinct, "
              f"sha256 {found[-1]['sha256'][:12]}", flush=True)
    return found


def main() -> None:
    p = parser(__doc__, "generalize", data=True)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--corpora", type=corpus_names, default=corpus_names(",".join([TUNING, *CORPORA])),
                   help=f"comma-separated, of {', '.join([TUNING, *CORPORA])} (default: all)")
    p.add_argument("--corpus-cache", type=Path, default=CACHE, help=f"the held-out corpora's .debs and texts "
                   f"(default {CACHE}, or $SPEEDRUN_BENCH_CORPORA)")
    p.add_argument("--same-wall", action="store_true", help=f"also {' and '.join(SAME_WALL_RECIPES)} given "
                   f"{BASELINE}'s stopwatch")
    p.add_argument("--reserve", type=float, default=RESERVE_SECONDS,
                   help="seconds of the baseline's wall-clock kept for the final evaluation and exit")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="added to every run (a short smoke test; such a record measures nothing)")
    args = p.parse_args()
    print_machine()
    corpora = load_corpora(args.corpora, args.data, args.corpus_cache)
    recipes = [OURS, *SAME_WALL_RECIPES] if args.same_wall else [OURS]
    dtypes = {recipe: precisions(recipe, args.override) for recipe in recipes}
    print_header()

    figures: dict[tuple[str, str, str | None, str | None], list[float]] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(1, args.seeds + 1):
            for corpus in corpora:
                name = corpus["name"]

                def run(recipe: str, extra: list[str], tag: str) -> dict:
                    return cold_run(recipe, Path(corpus["path"]), Path(tmp) / f"{name}-{recipe}-{tag}-{seed}",
                                    [f"train.seed={seed}", *extra, *args.override])

                def add(claim: str, value: float, run: str | None = None, dtype: str | None = None) -> None:
                    figures.setdefault((claim, name, run, dtype), []).append(value)

                base = run(BASELINE, [], "base")
                loss = base["metrics"]["val_loss"]
                add(f"{BASELINE} whole command", base["stopwatch"])
                add(f"{BASELINE} val_loss", loss)
                rows.append(run_row(f"{name}: {BASELINE}", base["dtype"], seed, base, f"val {loss:.4f}",
                                    corpus=name, val_loss=loss))
                for dtype in dtypes[OURS]:
                    s = run(OURS, [f"dtype={dtype}", f"train.target_val_loss={loss}"], f"to-base-{dtype}")
                    reached = s["time_to_target"] is not None
                    speedup = base["stopwatch"] / s["stopwatch"] if reached else 0.0
                    add(SPEEDUP, speedup, dtype=dtype)
                    rows.append(run_row(
                        f"{name}: {OURS} to {loss:.4f}", dtype, seed, s,
                        f"{'reached' if reached else 'NOT reached'} at step {s['steps']}, {per_char(s):.4f}/char, "
                        f"{speedup:.2f}x", corpus=name, target_val_loss=loss,
                        reached_at_step=s["steps"] if reached else None, val_per_char=per_char(s),
                        speedup_x=speedup, time_to_target=s["time_to_target"]))
                budget = base["stopwatch"] - args.reserve
                for recipe in recipes[1:]:
                    for dtype in dtypes[recipe]:
                        s = run(recipe, [f"dtype={dtype}", f"train.time_budget={budget:.1f}"], f"same-wall-{dtype}")
                        add(SAME_WALL, per_char(s), recipe, dtype)
                        rows.append(run_row(
                            f"{name}: {recipe} {budget:.0f} s", dtype, seed, s,
                            f"val {per_char(s):.4f}/char beside {BASELINE}'s {loss:.4f}, "
                            f"{s['stopwatch'] / base['stopwatch']:.2f}x its wall", corpus=name,
                            val_per_char=per_char(s), test_per_char=per_char(s, "test"), baseline_val_loss=loss,
                            fraction_of_baseline_wall=s["stopwatch"] / base["stopwatch"]))
            summary = summarised(figures)
            write_record("generalize", {"corpora": [{k: v for k, v in c.items() if k != "path"} for c in corpora],
                                        "runs": rows, "summary": summary},
                         caches="cold", out=args.out, seeds=list(range(1, seed + 1)), caches_note=COLD_NOTE)
    print()
    for row in summary:
        print(summary_line(row))


def summarised(figures: dict[tuple[str, str, str | None, str | None], list[float]]) -> list[dict]:
    """Per claim, corpus, recipe and precision: the median and range over the seeds so far; the
    speedups met or missed against their corpus's target."""
    summary = []
    for (claim, corpus, run, dtype), values in figures.items():
        labels = {k: v for k, v in (("corpus", corpus), ("run", run), ("dtype", dtype)) if v is not None}
        if claim == SPEEDUP:
            summary.append(summarise(claim, values, speedup_target(corpus), False, UNITS[claim], **labels))
        else:
            summary.append(summarise(claim, values, unit=UNITS[claim], **labels))
    return summary


if __name__ == "__main__":
    main()
