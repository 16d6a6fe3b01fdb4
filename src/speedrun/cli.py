"""The `speedrun` command: a thin layer over the library.

User mistakes (bad recipe, bad override, bad path, bad prompt) print one line
starting with `error:` and exit with code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import sys
from pathlib import Path

from .chat.engine import CHAT_TEMPERATURE, CHAT_TOP_K
from .config import (
    ConfigError,
    load_config,
    recipe_description,
    recipe_names,
)
from .plan import GPUS
from .run import USER_ERRORS


def cmd_train(args) -> int:
    from .clock import process_start
    from .run import Run
    from .trainer import Diverged, Interrupted

    started = process_start()
    if args.resume:
        if args.recipe or args.overrides or args.out or args.data:
            raise ConfigError("--resume RUN_DIR continues a run with its own config; "
                              "give no recipe, overrides, --out or --data with it")
        run = Run.resumed(args.resume, started=started, progress=not args.quiet)
    else:
        if not args.recipe:
            raise ConfigError("name a recipe (see `speedrun recipes`) or give --resume RUN_DIR")
        overrides = list(args.overrides) + ([f"data.source={json.dumps(args.data)}"] if args.data else [])
        run = Run(load_config(args.recipe, overrides), out=args.out, started=started, progress=not args.quiet)
    try:
        run.execute()
    except Interrupted:
        return 130
    except Diverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_prepare(args) -> int:
    """Prepare a source for a recipe's [data] settings, once, before any training run."""
    from .config import TextData
    from .data.preparation import describe, prepare

    overrides = list(args.overrides)
    recipe = args.recipe
    if recipe and "=" in recipe:
        overrides, recipe = [recipe, *overrides], None
    recipe = recipe or "shakespeare-bpe"
    if not isinstance(load_config(recipe, overrides).data, TextData):
        raise ConfigError(f"recipe {recipe!r} trains a task that reads no corpus; "
                          f"give a text recipe (e.g. shakespeare-bpe)")
    cfg = load_config(recipe, [*overrides, f"data.source={json.dumps(args.source)}"])
    ds = prepare(cfg.data, progress=not args.quiet, out=args.out or "")
    print(describe(ds))
    print(f"train on it with: speedrun train {recipe} --data {shlex.quote(str(ds.folder if args.out else args.source))}"
          + "".join(f" {shlex.quote(o)}" for o in overrides))
    return 0


def cmd_verify(args) -> int:
    from .verify import format_record, verify
    from .verify_chat import (
        CHAT_MIN_SEEDS,
        CHAT_PIPELINE,
        format_chat_record,
        verify_chat,
    )

    command = shlex.join(["speedrun", *getattr(args, "argv", [])])
    chat = args.recipe == CHAT_PIPELINE
    seeds = args.seeds if args.seeds is not None else CHAT_MIN_SEEDS if chat else 5
    if chat:
        if args.target is not None:
            raise ConfigError("--target: the chat claim's targets are fixed (each task's accuracy and its margin "
                              "over the constant answer); leave it out")
        record = verify_chat(chat_settings(args), seeds, args.out, args.first_seed, args.base,
                             args.sft_only, warm=args.warm, command=command)
    else:
        if args.base or args.sft_only:
            raise ConfigError(f"--base and --sft-only fine-tune one base over the seeds: they are for "
                              f"`speedrun verify {CHAT_PIPELINE}`")
        overrides = list(args.overrides) + ([f"data.source={json.dumps(args.data)}"] if args.data else [])
        record = verify(args.recipe, overrides, seeds, args.target, args.out, args.first_seed,
                        warm=args.warm, command=command)
    print("\n" + (format_chat_record if chat else format_record)(record))
    print(f"record: {Path(record['out']) / 'verify.json'}")
    return 0 if record["holds"] else 1


def chat_settings(args) -> dict:
    """What every seed of `speedrun verify chat-pipeline` runs with, as pipeline.json records it, built
    here so that a typo fails before any seed. With --base, the base's own settings and the user's
    sft.<key> overrides on top: the tokenizer and the base model are already made."""
    from dataclasses import asdict

    from .apps.chat_pipeline import Pipeline, parse_pipeline_overrides
    from .verify_chat import base_settings, pipeline_arguments

    overrides = list(args.overrides)
    if args.base:
        fixed = [o for o in overrides if not o.startswith("sft.")] + (["--data"] if args.data else [])
        if fixed:
            raise ConfigError(f"{fixed[0]}: with --base the pipeline settings and the base stage's are the base "
                              "folder's (its pipeline.json); give only sft.<key> overrides, or leave out --base")
        overrides = pipeline_arguments(base_settings(args.base)) + overrides
    elif args.data:
        overrides.append(f"corpus={json.dumps(args.data)}")
    cfg, base, sft = parse_pipeline_overrides(overrides)
    Pipeline(os.devnull, cfg, base, sft, progress=False)  # builds both stage configs; reads and writes no folder
    return {"config": asdict(cfg), "overrides": {"base": base, "sft": sft}}


def cmd_recipes(args) -> int:
    names = recipe_names()
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {recipe_description(name)}")
    return 0


def cmd_sample(args) -> int:
    import torch

    from .loading import load_model
    from .model import generate

    model, tok, cfg, rt = load_model(args.run_dir, args.device)
    # No prompt: start a fresh document, after an end-of-document token.
    start = tok.encode(args.prompt) if args.prompt else [tok.eot_id]
    generator = torch.Generator(device=rt.device).manual_seed(args.seed)
    idx = torch.tensor([start], device=rt.device)
    with rt.generation_autocast():
        out = generate(model, idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, stop_token=tok.eot_id, generator=generator)
    text = tok.decode(out[0, len(start):].tolist())
    eot = getattr(tok, "eot", None)
    if eot and text.endswith(eot):
        text = text[: -len(eot)]
    print(args.prompt + text)
    return 0


def cmd_bench(args) -> int:
    import torch

    from .device import cpu_flags, hardware, native_bf16, pick_device
    from .flops import peak_record

    device = pick_device(args.device)
    print(f"{hardware()['gpu'] if device.type == 'cuda' else hardware()['cpu']} ({device}, "
          f"{torch.get_num_threads()} threads)")
    if device.type == "cpu":
        print(f"flags: {' '.join(cpu_flags()) or 'none read'}")
    print(f"native bf16: {'yes' if native_bf16(device.type) else 'no (bf16 is emulated: dtype=auto trains in fp32)'}")
    for dtype in (torch.float32, torch.bfloat16):
        peak = peak_record(device, dtype, refresh=True)
        print(f"{str(dtype).replace('torch.', ''):>9} matmul peak: {peak['flops'] / 1e9:,.0f} GFLOP/s "
              f"({peak['method']}, {peak['measured']})")
    return 0


def cmd_plan(args) -> int:
    from .plan import describe, make_plan

    overrides = list(args.overrides) + ([f"data.source={json.dumps(args.data)}"] if args.data else [])
    cfg = load_config(args.recipe, overrides)
    if args.gpus < 1:
        raise ConfigError(f"--gpus {args.gpus}: give at least 1 device")
    if args.mfu is not None and not 0 < args.mfu <= 1:
        raise ConfigError(f"--mfu {args.mfu}: give a fraction of the peak between 0 and 1, e.g. 0.4")
    plan = make_plan(cfg, gpus=args.gpus, gpu=args.gpu, mfu=args.mfu, price=args.price)
    print(json.dumps(plan.as_dict(), indent=1) if args.json else describe(plan))
    return 0


def cmd_chat_pipeline(args) -> int:
    from .apps.chat_pipeline import STAGES, Pipeline, parse_pipeline_overrides

    overrides = (list(args.overrides) + ([f"corpus={json.dumps(args.data)}"] if args.data else [])
                 + ([f"base_recipe={json.dumps(args.base_recipe)}"] if args.base_recipe else [])
                 + ([f"sft.data.conversations={json.dumps(args.sft_data)}"] if args.sft_data else []))
    cfg, base, sft = parse_pipeline_overrides(overrides)
    stages = tuple(args.stage) if args.stage else STAGES
    Pipeline(args.out, cfg, base, sft, progress=not args.quiet).run(stages, force=args.force)
    print(f"chat with it: speedrun chat {args.out}   or in a browser: speedrun serve {args.out}")
    return 0


def cmd_report(args) -> int:
    from .report import write_report
    from .rundir import ChatRunDir

    if len(args.run_dirs) == 1 and ChatRunDir(args.run_dirs[0]).is_pipeline():
        from .apps.chat_report import write_chat_report

        print(f"wrote {write_chat_report(args.run_dirs[0])}")
        return 0
    print(write_report(args.run_dirs, args.out, args.baseline), end="")
    out = Path(args.out) if args.out else Path(args.run_dirs[0])
    print(f"\nwrote {out / 'learning_curves.png'}, {out / 'report.md'} and a submission/ folder in each run")
    return 0


def cmd_chat(args) -> int:
    import torch

    from .apps.chat_cli import answer, chat_loop, conversation
    from .chat.engine import PromptTooLong
    from .loading import load_engine

    if args.seed is not None:
        torch.manual_seed(args.seed)
    engine = load_engine(args.run_dir, args.device)
    options = {"temperature": args.temperature, "top_k": args.top_k, "max_new_tokens": args.max_new_tokens}
    if args.prompt is None:
        chat_loop(engine, args.system, **options)
        return 0
    try:
        answer(engine, conversation(args.system) + [{"role": "user", "content": args.prompt}], sys.stdout, **options)
    except PromptTooLong as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_serve(args) -> int:
    from .apps.server import LOCAL_HOSTS, serve
    from .loading import load_engine

    if args.host not in LOCAL_HOSTS:
        print(f"warning: serving on {args.host}: anyone who can reach this machine on port {args.port} "
              "can use the model, with no login", file=sys.stderr)
    engine = load_engine(args.run_dir, args.device)
    serve(engine, args.host, args.port, name=Path(args.run_dir).name, max_prompt_chars=args.max_prompt_chars,
          max_new_tokens=args.max_new_tokens)
    return 0


def cmd_export(args) -> int:
    from .chat.engine import chat_run_dir
    from .export import PARITY_TOLERANCE, export_run

    result = export_run(chat_run_dir(args.run_dir), args.out, args.to)
    diff = result["max_logit_diff"]
    print(f"wrote {result['out']} ({result['architecture']})")
    if diff is None:
        print("not checked against transformers, which is not installed: pip install 'speedrun[export]'")
        return 0
    print(f"largest logit difference from speedrun's own model: {diff:.1e}")
    if diff > PARITY_TOLERANCE:
        print(f"error: the export does not compute what the model computes (difference above "
              f"{PARITY_TOLERANCE:g}); please report this", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .apps.chat_pipeline import STAGES

    p = argparse.ArgumentParser(prog="speedrun", description="Train small GPTs from scratch, fast.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a recipe (bundled name or path to a .toml)")
    t.add_argument("recipe", nargs="?", help="bundled recipe name (see `speedrun recipes`) or a TOML file")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.seed=3")
    t.add_argument("--out", help="run directory (default runs/<recipe>-<timestamp>); must be new or empty")
    t.add_argument("--data", help="training text: a file, folder, glob, .jsonl, .parquet or hf:NAME "
                                  "(sets data.source)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bar or per-step lines")
    t.set_defaults(func=cmd_train)

    pr = sub.add_parser("prepare", help="tokenize a corpus into shards once, for a recipe's data settings "
                                        "(speedrun train does it too, on first use)")
    pr.add_argument("source", help="a file, folder, glob, .jsonl, .parquet (or a folder of them) or hf:NAME")
    pr.add_argument("recipe", nargs="?", help="the recipe whose [data] settings decide the tokens "
                                              "(default shakespeare-bpe)")
    pr.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. data.vocab_size=8192")
    pr.add_argument("--out", help="folder to prepare into (default: the cache, where speedrun train finds it); "
                                  "train on it with --data OUT")
    pr.add_argument("--quiet", action="store_true", help="no progress bars")
    pr.set_defaults(func=cmd_prepare)

    v = sub.add_parser("verify", help="train a recipe (or the chat pipeline) over several seeds, one process each, "
                                      "and test whether it reaches its target (exit code 0 if so, 1 if not)")
    v.add_argument("recipe", help="bundled recipe name or a TOML file, or chat-pipeline: each task's held-out "
                                  "accuracy and margin over the constant answer, on every seed")
    v.add_argument("overrides", nargs="*", help="dotted key=value overrides, applied to every seed (chat-pipeline: "
                                                "its own, e.g. sft.train.time_budget=600)")
    v.add_argument("--seeds", type=int, help="runs, with train.seed = 1..N (default 5; chat-pipeline 3)")
    v.add_argument("--first-seed", type=int, default=1, help="the first seed (default 1)")
    v.add_argument("--target", type=float, help="the loss to reach (default: the recipe's train.target_val_loss), "
                                                "or addition's exact-match rate (default 1.0)")
    v.add_argument("--out", help="folder for seed-K/ run directories, logs/ and verify.json (default "
                                 "runs/verify-<recipe>-<timestamp>); run again to finish an interrupted verify")
    v.add_argument("--data", help="training text, as for `speedrun train --data` (sets data.source)")
    v.add_argument("--warm", action="store_true", help="let the seeds share this machine's speedrun and "
                                                       "compiler caches (default: each seed starts cold)")
    v.add_argument("--sft-only", action="store_true", help="chat-pipeline: train the tokenizer and base once "
                                                           "(OUT/base/) and only fine-tune it per seed")
    v.add_argument("--base", metavar="PIPELINE_DIR", help="chat-pipeline: fine-tune this finished pipeline's base "
                                                          "per seed (copied; the folder is only read)")
    v.set_defaults(func=cmd_verify)

    r = sub.add_parser("recipes", help="list the bundled recipes")
    r.set_defaults(func=cmd_recipes)

    s = sub.add_parser("sample", help="continue a prompt with a trained run's checkpoint")
    s.add_argument("run_dir", help="a run directory or a `speedrun export` folder")
    s.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    s.add_argument("--max-new-tokens", type=int, default=200)
    s.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy argmax")
    s.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens; 0: all")
    s.add_argument("--top-p", type=float, default=1.0, help="sample from the smallest set of tokens "
                                                            "holding this probability; 1: all")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_sample)

    pl = sub.add_parser("plan", help="a run's parameters, tokens, FLOPs, memory per device, wall-clock and "
                                     "cost, before starting it")
    pl.add_argument("recipe", help="bundled recipe name or a TOML file")
    pl.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. model.depth=12")
    pl.add_argument("--gpus", type=int, default=1, help="devices (processes under torchrun; default 1)")
    pl.add_argument("--gpu", default="cpu", choices=["cpu", *GPUS],
                    help="the device kind: cpu (this machine, measured) or a GPU kind (published peak)")
    pl.add_argument("--mfu", type=float, help="the share of the peak to plan with (default: what runs "
                                              "reached here on a CPU, else an assumed 0.4 on a GPU)")
    pl.add_argument("--price", type=float, help="USD per device-hour (default: a published figure where "
                                                "there is one)")
    pl.add_argument("--data", help="the training data, as for `speedrun train --data` (its prepared "
                                   "vocabulary and size, when it is prepared)")
    pl.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    pl.set_defaults(func=cmd_plan)

    b = sub.add_parser("bench", help="measure this machine: `speedrun bench peak` (matmul FLOP/s, fp32 and bf16)")
    b.add_argument("what", choices=["peak"])
    b.add_argument("--device", default="auto")
    b.set_defaults(func=cmd_bench)

    c = sub.add_parser("chat-pipeline", help="corpus -> tokenizer -> base model -> fine-tuned chat model, "
                                              "with task evaluation and report.md")
    c.add_argument("overrides", nargs="*", help="pipeline keys (vocab_size=1024, identity_name=Ada) or a "
                                                "stage's recipe keys (base.train.time_budget=60, sft.data.spelling=2)")
    c.add_argument("--out", default="runs/chat", help="the pipeline's folder (default runs/chat); run again "
                                                      "to continue, finished stages are skipped")
    c.add_argument("--data", help="pretraining corpus: a file, folder, glob, .jsonl, .parquet or hf:NAME "
                                  "(default: Python's own documentation)")
    c.add_argument("--base-recipe", help="the base model's recipe (default chat-base; base-d20 on a GPU node); "
                                         "the pipeline sets its data and tokenizer")
    c.add_argument("--sft-data", help="your conversations for fine-tuning, beside the built-in tasks: JSONL of "
                                      '{"messages": [...]}, hf:NAME or a saved dataset folder')
    c.add_argument("--stage", action="append", choices=STAGES,
                   help="run only this stage (repeatable)")
    c.add_argument("--force", action="store_true", help="run the chosen stages again even if finished")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.set_defaults(func=cmd_chat_pipeline)

    rp = sub.add_parser("report", help="learning curves, a summary table and a submission folder per run")
    rp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by `speedrun train`, "
                                                                  "or one chat pipeline folder")
    rp.add_argument("--out", help="folder for learning_curves.png and report.md (default: the first run's)")
    rp.add_argument("--baseline", metavar="RECIPE",
                    help="recipe each run's config is compared with (default: the run's own bundled recipe)")
    rp.set_defaults(func=cmd_report)

    ch = sub.add_parser("chat", help="talk with a chat model in the terminal")
    ch.add_argument("run_dir", help="a chat pipeline's folder, a run directory or a `speedrun export` folder")
    ch.add_argument("-p", "--prompt", help="answer this one message and exit")
    ch.add_argument("--system", help="a system message that opens the conversation")
    ch.add_argument("--temperature", type=float, default=CHAT_TEMPERATURE, help="0 is greedy argmax")
    ch.add_argument("--top-k", type=int, default=CHAT_TOP_K, help="sample among the k likeliest tokens; 0: all")
    ch.add_argument("--max-new-tokens", type=int, default=256, help="at most this many tokens per answer")
    ch.add_argument("--seed", type=int, help="make the sampled answers repeatable")
    ch.add_argument("--device", default="auto")
    ch.set_defaults(func=cmd_chat)

    ex = sub.add_parser("export", help="write a run's model for other tools: a transformers folder "
                                         "(--to hf) or llama.cpp's GGUF (--to gguf)")
    ex.add_argument("run_dir", help="a run directory or a chat pipeline's folder")
    ex.add_argument("out", metavar="OUT_DIR", help="folder to write; must be new or empty")
    ex.add_argument("--to", choices=["hf", "gguf"], required=True,
                    help="hf: AutoModelForCausalLM.from_pretrained(OUT_DIR) loads it; gguf: GPT-2 style models")
    ex.set_defaults(func=cmd_export)

    sv = sub.add_parser("serve", help="a chat web page and API for a chat model (http://127.0.0.1:8000)")
    sv.add_argument("run_dir", help="a chat pipeline's folder, a run directory or a `speedrun export` folder")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on; another than this machine's "
                                                        "own lets anyone on the network use the model")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--device", default="auto")
    sv.add_argument("--max-prompt-chars", type=int, default=8000, help="longest conversation a request may send")
    sv.add_argument("--max-new-tokens", type=int, default=256, help="longest answer a request may ask for "
                                                                     "(and the default)")
    sv.set_defaults(func=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options (`--data x train.steps=5`); argparse
    # collects positionals only before the first option, so gather the rest here.
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    if args.command in ("train", "chat-pipeline", "verify", "prepare") and overrides:
        args.overrides = list(args.overrides) + overrides
        extra = [a for a in extra if a not in overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command, as verify records it
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The `speedrun` command: main, then exit. Freezing the heap first spares the interpreter's
    final garbage collections a walk over torch's objects: ~0.4 s of every command's wall-clock."""
    code = main()
    gc.freeze()
    sys.exit(code)
