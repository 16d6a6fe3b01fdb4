"""Language modelling on the user's text: batches, honest evaluation, samples.

The text is prepared once into token shards (speedrun.data.preparation: train, val
and, with data.test_fraction, test), and the task reads windows from them.
Training and every evaluation during the run, the best checkpoint and a target's
time_to_target look at val only; test is scored once, after training, so the
figures reported on it were never tuned on.

An evaluation scores the first `data.eval_tokens` tokens of its split (the whole
split when it is smaller, as every bundled recipe's is), the same tokens in every
run on the dataset, each exactly once, the first included: the split starts with
an end-of-document token that is context only, then it is cut into consecutive
windows of `block_size` targets and the last, shorter window is scored too, so
nothing is dropped and the mean is over the tokens actually scored
(`val_tokens`, reported beside each figure). `val_bpb` (`test_bpb`)
divides the summed loss (in bits) by the UTF-8 bytes of the text those targets
stand for, which makes character-level and BPE models comparable;
end-of-document tokens stand for no text and are left out of it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..config import Config, TextData
from ..data import DataError, prepare
from ..device import Runtime
from ..model import evaluating, generate
from . import Task


def eval_windows(n_tokens: int, block_size: int) -> list[tuple[int, int]]:
    """(start, length) windows whose targets cover tokens 1..n_tokens-1 exactly once
    (token 0 of an evaluation split is its leading end-of-document token)."""
    targets = n_tokens - 1
    return [(s, min(block_size, targets - s)) for s in range(0, targets, block_size)]


def token_byte_lengths(tokenizer) -> torch.Tensor:
    """UTF-8 bytes each token id stands for (0 for special tokens)."""
    lengths = torch.zeros(tokenizer.vocab_size, dtype=torch.float64)
    for i in range(tokenizer.vocab_size):
        lengths[i] = tokenizer.token_bytes(i)
    return lengths


class TextTask(Task):
    name = "text"

    @classmethod
    def from_config(cls, cfg: Config) -> "TextTask":
        return cls(cfg.data, block_size=cfg.model.block_size, seed=cfg.train.seed)

    def __init__(self, cfg: TextData, block_size: int, seed: int, tokenizer=None, progress: bool | None = None):
        self.cfg, self.block_size, self.seed = cfg, block_size, seed
        self.dataset = prepare(cfg, tokenizer, progress)
        self.tokenizer = self.dataset.tokenizer
        self.train_tokens = self.dataset.split("train")
        val, test = self.dataset.split("val"), self.dataset.split("test")
        if val is None:
            raise DataError("there is no validation text; set data.val_fraction above 0 or give data.val_source")
        # the first eval_tokens targets, after the leading end-of-document token
        self.val_tokens = val.head(cfg.eval_tokens + 1 if cfg.eval_tokens else 0)
        self.test_tokens = test.head(cfg.eval_tokens + 1 if cfg.eval_tokens else 0) if test is not None else None
        for split, tokens in (("training", self.train_tokens), ("validation", self.val_tokens)):
            if tokens is None or len(tokens) < block_size + 2:
                raise DataError(f"the {split} text has {len(tokens) if tokens else 0} tokens, fewer than one "
                                f"block of {block_size + 1}; give more text or lower model.block_size")
        self.token_bytes = token_byte_lengths(self.tokenizer)
        self.windows_seen = 0  # data position for epoch-style passes
        self._order_epoch, self._order = -1, None  # the shuffle of the current epoch
        self.last_full_val: tuple[int, dict] | None = None  # (step, metrics) of the last whole-split val

    # --- training data -------------------------------------------------
    def planned_steps(self, tokens_per_step: int) -> int | None:
        """data.epochs > 0 asks for that many passes over the training tokens."""
        if self.cfg.epochs <= 0:
            return None
        return max(1, math.ceil(self.cfg.epochs * len(self.train_tokens) / tokens_per_step))

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows; with data.epochs, consecutive slices of a per-epoch shuffle of
        non-overlapping windows, so each epoch sees every training token once."""
        T = self.block_size
        if self.cfg.epochs > 0:
            n_windows = (len(self.train_tokens) - 1) // T
            starts = []
            for _ in range(batch_size):
                epoch, k = divmod(self.windows_seen, n_windows)
                order = self._epoch_order(epoch, n_windows)
                starts.append(int(order[k]) * T)
                self.windows_seen += 1
            starts = np.array(starts)
        else:
            starts = torch.randint(len(self.train_tokens) - T - 1, (batch_size,), generator=generator).numpy()
        rows = torch.from_numpy(self.train_tokens.rows(starts, T + 1))
        return rows[:, :-1], rows[:, 1:]

    def _epoch_order(self, epoch: int, n_windows: int) -> np.ndarray:
        if self._order_epoch != epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(n_windows)
            self._order_epoch = epoch
        return self._order

    def state_dict(self) -> dict:
        """The data position beyond the generator's state: windows taken in epoch order, and
        which prepared dataset they index (a resume on other tokens would not be exact)."""
        return {"windows_seen": self.windows_seen, "dataset": self.dataset.key}

    def load_state_dict(self, state: dict) -> None:
        if state.get("dataset", self.dataset.key) != self.dataset.key:
            raise DataError(f"the checkpoint was trained on prepared dataset {state['dataset']}, but the data "
                            f"now prepares as {self.dataset.key} (the source or a data setting changed); resume "
                            f"with the data it was trained on")
        self.windows_seen = int(state["windows_seen"])

    # --- evaluation ----------------------------------------------------
    @torch.inference_mode()
    def score(self, model, rt: Runtime, tokens, windows: list[tuple[int, int]],
              batch_size: int = 64) -> dict:
        """Sums over the targets of `windows` of `tokens`: loss in nats (all tokens), loss
        in bits on tokens that stand for text, token count and UTF-8 byte count; and the two
        means every evaluation reports: `loss` (nats per token) and `bpb` (bits per byte)."""
        total = {"nats": 0.0, "text_bits": 0.0, "tokens": 0, "bytes": 0.0}
        by_length: dict[int, list[int]] = {}
        for start, length in windows:
            by_length.setdefault(length, []).append(start)
        with evaluating(model):
            for length, starts in by_length.items():
                for i in range(0, len(starts), batch_size):
                    s = np.array(starts[i:i + batch_size])
                    rows = torch.from_numpy(tokens.rows(s, length + 1))
                    with rt.autocast():
                        logits = model(rows[:, :-1].to(rt.device))
                    y = rows[:, 1:].reshape(-1)
                    losses = torch.nn.functional.cross_entropy(
                        logits.float().reshape(-1, logits.size(-1)), y.to(rt.device), reduction="none").double().cpu()
                    nbytes = self.token_bytes[y]
                    total["nats"] += losses.sum().item()
                    total["text_bits"] += losses[nbytes > 0].sum().item() / math.log(2)
                    total["tokens"] += y.numel()
                    total["bytes"] += nbytes.sum().item()
        return {**total, "loss": total["nats"] / total["tokens"],
                "bpb": total["text_bits"] / max(total["bytes"], 1.0)}

    def full_evaluate(self, model, rt: Runtime, step: int) -> dict:
        """The whole validation split, scored once per step: a run that stops at the step where
        it confirmed its target reports that evaluation instead of scoring the same weights again."""
        if self.last_full_val is None or self.last_full_val[0] != step:
            self.last_full_val = (step, self.full_eval(model, rt))
        return dict(self.last_full_val[1])  # a copy: callers add the sample and the test split

    def full_eval(self, model, rt: Runtime, split: str = "val") -> dict:
        """The whole split scored: {split}_loss, _perplexity, _bpb and _tokens."""
        tokens = self.test_tokens if split == "test" else self.val_tokens
        s = self.score(model, rt, tokens, eval_windows(len(tokens), self.block_size))
        metrics = {f"{split}_loss": s["loss"], f"{split}_perplexity": math.exp(min(s["loss"], 50.0)),
                   f"{split}_bpb": s["bpb"], f"{split}_tokens": s["tokens"]}
        return {**metrics, "eval": "full"} if split == "val" else metrics

    def sampled_eval(self, model, rt: Runtime, step: int, batch_size: int = 64) -> dict:
        """A cheaper estimate on random windows (data.eval_batches batches), seeded by step:
        val_loss and val_bpb, so a target on either is noticed here, then confirmed in full."""
        g = np.random.default_rng([self.seed, step])
        starts = g.integers(0, len(self.val_tokens) - self.block_size - 1, self.cfg.eval_batches * batch_size)
        s = self.score(model, rt, self.val_tokens, [(int(st), self.block_size) for st in starts], batch_size)
        return {"val_loss": s["loss"], "val_bpb": s["bpb"], "eval": "sampled"}

    def sample(self, model, rt: Runtime, step: int) -> str:
        tok = self.tokenizer
        prompt = tok.encode(self.cfg.sample_prompt) if self.cfg.sample_prompt else [tok.eot_id]
        g = torch.Generator(device=rt.device).manual_seed(self.seed + step)  # multinomial wants it on the logits' device
        idx = torch.tensor([prompt], device=rt.device)  # generate() keeps to the last block itself
        with evaluating(model), rt.autocast():
            out = generate(model, idx, self.cfg.sample_tokens, self.cfg.temperature, self.cfg.top_k,
                           self.cfg.top_p, generator=g)
        return tok.decode(out[0, len(prompt):].tolist())

    def evaluate(self, model, rt: Runtime, step: int, final: bool = False) -> dict:
        """The whole split (always when final), or the sampled estimate; a text sample goes
        with the whole split only, so frequent quick estimates do not pay for generation."""
        full = final or not self.cfg.eval_batches
        metrics = self.full_evaluate(model, rt, step) if full else self.sampled_eval(model, rt, step)
        if self.cfg.sample_tokens and full:
            metrics["sample"] = self.sample(model, rt, step)
        return metrics

    def final_metrics(self, model, rt: Runtime, step: int) -> dict:
        """The whole validation split, and the test split when there is one (only here)."""
        metrics = self.evaluate(model, rt, step, final=True)
        if self.test_tokens is not None:
            metrics.update(self.full_eval(model, rt, "test"))
        return metrics
