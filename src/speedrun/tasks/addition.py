"""3-digit addition: data, and the exhaustive check over all 1,000,000 pairs.

A sequence is `aaa+bbb=ssss` followed by the end symbol, operands zero-padded.
The 4-digit sum is written most significant digit first (`plain`, 123+456=0579)
or least significant first (`reversed`, 123+456=9750). Reversed is easier to
learn: each digit then depends only on digits the model has already seen and
the carry out of the digit it has just written.

The exhaustive check is teacher-forced: the true sequence is fed in and every
answer position's argmax must equal the true digit. That is exactly greedy
decoding's exact match: greedy emits the true digit at step k if and only if
its prefix (the true digits before k) yields that argmax, which is what the
teacher-forced check tests for every k at once.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..config import AdditionData, Config
from ..device import Runtime
from ..model import IGNORE_INDEX, evaluating, generate
from ..tokenizer import CharTokenizer
from . import Task

N = 1000
PROMPT_LEN = 8  # "aaa+bbb="
ANSWER_LEN = 4
SEQ_LEN = PROMPT_LEN + ANSWER_LEN + 1  # answer, then the end symbol
TOKENIZER = CharTokenizer("0123456789+=\n", eot="\n")
PLUS, EQUALS, END = TOKENIZER.encode("+=\n")


def carries(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Number of digit positions (0-3) that produce a carry in a + b."""
    count = np.zeros(np.broadcast(a, b).shape, dtype=np.int64)
    carry = np.zeros_like(count)
    for place in (1, 10, 100):
        carry = ((a // place % 10 + b // place % 10 + carry) >= 10).astype(np.int64)
        count += carry
    return count


def encode_pairs(a: np.ndarray, b: np.ndarray, answer: str) -> np.ndarray:
    """Token ids (len(a), SEQ_LEN) for the pairs a + b (digit ids equal digits)."""
    s = a + b
    digits = lambda x, n: np.stack([x // 10 ** (n - 1 - i) % 10 for i in range(n)], axis=1)
    out = np.empty((len(a), SEQ_LEN), dtype=np.int64)
    out[:, 0:3], out[:, 3], out[:, 4:7], out[:, 7] = digits(a, 3), PLUS, digits(b, 3), EQUALS
    ans = digits(s, ANSWER_LEN)
    out[:, PROMPT_LEN:PROMPT_LEN + ANSWER_LEN] = ans[:, ::-1] if answer == "reversed" else ans
    out[:, -1] = END
    return out


def read_answer(digits: str, answer: str) -> int | None:
    """The integer a model's answer digits stand for, or None if they are not digits."""
    if len(digits) != ANSWER_LEN or not digits.isdigit():
        return None
    return int(digits[::-1] if answer == "reversed" else digits)


class AdditionTask(Task):
    name = "addition"
    tokenizer = TOKENIZER
    block_size = SEQ_LEN - 1

    @classmethod
    def from_config(cls, cfg: Config) -> "AdditionTask":
        return cls(cfg.data, seed=cfg.train.seed)

    def __init__(self, cfg: AdditionData, seed: int):
        self.cfg = cfg
        all_a, all_b = np.divmod(np.arange(N * N), N)
        self.tokens = torch.from_numpy(encode_pairs(all_a, all_b, cfg.answer))
        self.carries = torch.from_numpy(carries(all_a, all_b))
        rng = np.random.default_rng(seed)
        pool = self._pool(rng)
        n_val = int(len(pool) * cfg.val_fraction)
        self.val_ids = torch.from_numpy(pool[:n_val] if cfg.train_pairs else rng.choice(N * N, 10_000, replace=False))
        train = pool[n_val:] if cfg.train_pairs else pool
        self.train_ids = torch.from_numpy(train)
        # Sampling balanced by carries: training ids grouped by carry count.
        order = torch.argsort(self.carries[self.train_ids], stable=True)
        self.train_by_carry = self.train_ids[order]
        self.carry_counts = torch.bincount(self.carries[self.train_ids], minlength=4)
        self.carry_starts = torch.cumsum(self.carry_counts, 0) - self.carry_counts
        self.probe_ids = self._probe(rng)
        self.rng = torch.Generator().manual_seed(seed)
        self._verified = None  # (step, per-pair correctness, seconds) of a passed exhaustive check
        self.seen = torch.zeros(N * N, dtype=torch.bool)  # pairs drawn for training so far

    def state_dict(self) -> dict:
        """What evaluation and the unseen-pairs figure depend on beyond the trainer's generator."""
        return {"seen": self.seen, "probe_ids": self.probe_ids, "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.seen, self.probe_ids = state["seen"], state["probe_ids"]
        self.rng.set_state(state["rng"])

    def _pool(self, rng) -> np.ndarray:
        """The pairs training may see: all of them, or train_pairs drawn (balanced if asked)."""
        if not self.cfg.train_pairs:
            return rng.permutation(N * N)
        if not self.cfg.balance_carries:
            return rng.choice(N * N, self.cfg.train_pairs, replace=False)
        c = self.carries.numpy()
        per_class = -(-self.cfg.train_pairs // 4)
        picks = [rng.choice(np.flatnonzero(c == k), per_class, replace=False) for k in range(4)]
        return rng.permutation(np.concatenate(picks))[: self.cfg.train_pairs]

    def _probe(self, rng) -> torch.Tensor:
        """A cheap check rich in carry chains: 1000 random pairs per carry count,
        every a + (1000 - a) (a carry through every digit) and every a + (999 - a)
        (all nines, no carry)."""
        c = self.carries.numpy()
        a = np.arange(1, N)
        ids = [rng.choice(np.flatnonzero(c == k), 1000, replace=False) for k in range(4)]
        ids += [a * N + (N - a), np.arange(N) * N + (N - 1 - np.arange(N))]
        return torch.from_numpy(np.unique(np.concatenate(ids)))

    # --- training data -------------------------------------------------
    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.balance_carries:
            present = torch.nonzero(self.carry_counts).squeeze(1)
            cls = present[torch.randint(len(present), (batch_size,), generator=generator)]
            offset = (torch.rand(batch_size, generator=generator) * self.carry_counts[cls]).long()
            ids = self.train_by_carry[self.carry_starts[cls] + offset]
        else:
            ids = self.train_ids[torch.randint(len(self.train_ids), (batch_size,), generator=generator)]
        self.seen[ids] = True
        return self.inputs_targets(ids)

    def inputs_targets(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seq = self.tokens[ids]
        x, y = seq[:, :-1], seq[:, 1:].clone()
        if self.cfg.answer_loss_only:
            y[:, : PROMPT_LEN - 1] = IGNORE_INDEX
        return x, y

    # --- evaluation ----------------------------------------------------
    @torch.inference_mode()
    def val_loss(self, model, rt: Runtime) -> float:
        total, count = 0.0, 0
        with evaluating(model):
            for chunk in self.val_ids.split(8192):
                x, y = self.inputs_targets(chunk)
                with rt.autocast():
                    _, loss = model(x.to(rt.device), y.to(rt.device))
                n = int((y != IGNORE_INDEX).sum())
                total, count = total + loss.item() * n, count + n
        return total / count

    def evaluate(self, model, rt: Runtime, step: int) -> dict:
        """Periodic check: val_loss and the probe; when the probe is fully right,
        the exhaustive check decides whether training is done. Pairs it finds
        wrong join the probe, so the next exhaustive check waits until they are right."""
        metrics = {"val_loss": self.val_loss(model, rt)}
        metrics["probe_exact_match"] = self.correct(model, rt, self.probe_ids).float().mean().item()
        if not (self.cfg.stop_on_probe and metrics["probe_exact_match"] == 1.0):
            return metrics
        # A tenth of all pairs first: a cheaper way to find the first mistakes.
        a_sample = torch.randperm(N, generator=self.rng)[: N // 10]
        ok = self.correct_all(model, rt, a_sample)
        metrics["sample_exact_match"] = ok.float().mean().item()
        ids = (a_sample[:, None] * N + torch.arange(N)).flatten()
        if ok.all():
            t0 = time.perf_counter()
            verdicts = self.correct_all(model, rt, until_wrong=True)
            seconds = time.perf_counter() - t0
            checked = verdicts >= 0
            ok, ids = verdicts[checked] == 1, torch.arange(N * N)[checked]
            metrics["exhaustive_checked"] = int(checked.sum())
            metrics["exhaustive_seconds"] = seconds
            if len(ok) == N * N and ok.all():
                self._verified = (step, ok, seconds)
                metrics["done"] = metrics["verified"] = True
                metrics["exact_match"] = 1.0
        self.probe_ids = torch.unique(torch.cat((self.probe_ids, ids[~ok][:5000])))
        return metrics

    def final_metrics(self, model, rt: Runtime, step: int) -> dict:
        if self._verified is not None and self._verified[0] == step:
            _, ok, seconds = self._verified
            return self.check(model, rt, ok=ok, seconds=seconds)
        return self.check(model, rt)

    @torch.inference_mode()
    def correct(self, model, rt: Runtime, ids: torch.Tensor, batch_size: int = 25_000) -> torch.Tensor:
        """Boolean per pair: all answer digits right under teacher forcing."""
        out = []
        with evaluating(model):
            for chunk in ids.split(batch_size):
                seq = self.tokens[chunk].to(rt.device)
                with rt.autocast():
                    logits = model(seq[:, : PROMPT_LEN + ANSWER_LEN - 1], last=ANSWER_LEN)
                out.append((logits.argmax(-1) == seq[:, PROMPT_LEN:PROMPT_LEN + ANSWER_LEN]).all(-1).cpu())
        return torch.cat(out)

    def correct_all(self, model, rt: Runtime, a_values: torch.Tensor | None = None,
                    until_wrong: bool = False) -> torch.Tensor:
        """`correct` for every pair whose a is in a_values (default: all), sharing prefixes.
        The result is ordered by a_values, then b. With until_wrong the check stops at the
        first chunk holding a wrong pair (that alone decides that training goes on): the
        result is then int8, 1 right, 0 wrong, -1 not checked.

        Under causal attention a position's activations depend only on its
        prefix, and 1,000,000 sequences share few prefixes: 1,000 of `aaa+`,
        10,000 of `aaa+b` and 100,000 of `aaa+bb`. Each is computed once and its
        keys and values are copied to the sequences that extend it, which halves
        the work of the exhaustive check without changing what it computes.

        On a CPU the ops of a model this small are too short to split well
        across cores, so each core takes its own share of the a values instead
        (measured: ~20% faster on 2 cores than two threads inside each op).
        """
        a_values = torch.arange(N) if a_values is None else a_values
        verdicts = torch.full((len(a_values), N), -1, dtype=torch.int8)
        wrong = threading.Event() if until_wrong else None
        workers = torch.get_num_threads() if rt.device.type == "cpu" else 1
        shares = torch.arange(len(a_values)).tensor_split(workers)
        with evaluating(model):
            if workers == 1:
                self._check_rows(model, rt, a_values, shares[0], verdicts, wrong)
            else:
                torch.set_num_threads(1)
                try:
                    with ThreadPoolExecutor(workers) as pool:
                        list(pool.map(lambda rows: self._check_rows(model, rt, a_values, rows, verdicts, wrong),
                                      shares))
                finally:
                    torch.set_num_threads(workers)
        return verdicts.flatten() if until_wrong else verdicts.flatten() == 1

    @torch.inference_mode()
    def _check_rows(self, model, rt: Runtime, a_values: torch.Tensor, rows: torch.Tensor, verdicts: torch.Tensor,
                    wrong: threading.Event | None = None, a_per_chunk: int = 2) -> None:
        """Fill verdicts[rows] (one row of 1,000 b values per a) in chunks of a values.
        Small chunks keep the activations in cache (2 a values at a time: ~2x faster than 40)."""
        digits = torch.arange(10)
        for chunk in rows.split(a_per_chunk):
            if wrong is not None and wrong.is_set():
                return
            ids = a_values[chunk] * N  # pairs (a, 0)
            cache = model.new_cache()
            with rt.autocast():
                model(self.tokens[ids, :4].to(rt.device), cache=cache, last=1)
                for pos, place in ((4, 100), (5, 10), (6, 1)):
                    ids = (ids[:, None] + digits * place).flatten()
                    for layer in cache:
                        layer[:] = [t.repeat_interleave(10, dim=0) for t in layer]
                    seq = self.tokens[ids].to(rt.device)
                    end = pos + 1 if place > 1 else PROMPT_LEN + ANSWER_LEN - 1
                    logits = model(seq[:, pos:end], cache=cache, start=pos, last=1 if place > 1 else ANSWER_LEN)
            ok = (logits.argmax(-1) == seq[:, PROMPT_LEN:PROMPT_LEN + ANSWER_LEN]).all(-1).cpu()
            verdicts[chunk] = ok.view(len(chunk), N).to(torch.int8)
            if wrong is not None and not ok.all():
                wrong.set()

    def check(self, model, rt: Runtime, ids: torch.Tensor | None = None, ok: torch.Tensor | None = None,
              seconds: float = 0.0, max_failures: int = 20) -> dict:
        """Exact match over `ids` (default: all 1,000,000 pairs), by carry count.
        `ok` and `seconds` pass in an exhaustive check that was just run."""
        t0 = time.perf_counter() - seconds
        if ids is None:
            ids = torch.arange(N * N)
            ok = self.correct_all(model, rt) if ok is None else ok
        else:
            ok = self.correct(model, rt, ids)
        carries_ = self.carries[ids]
        by_carries = {}
        for k in range(4):
            sel = carries_ == k
            if sel.any():
                by_carries[str(k)] = ok[sel].float().mean().item()
        metrics = {
            "exact_match": ok.double().mean().item(),
            "evaluated": len(ids),
            "wrong": int((~ok).sum()),
            "verified": len(ids) == N * N and bool(ok.all()),
            "exact_match_by_carries": by_carries,
        }
        if len(ids) == N * N:
            unseen = ~self.seen  # pairs never drawn for a training batch
            metrics["pairs_seen_in_training"] = N * N - int(unseen.sum())
            metrics["exact_match_unseen_pairs"] = ok[unseen].double().mean().item() if unseen.any() else None
        metrics["failures"] = self.failures(model, rt, ids[~ok][:max_failures])
        metrics["check_seconds"] = time.perf_counter() - t0
        return metrics

    def failures(self, model, rt: Runtime, ids: torch.Tensor) -> list[dict]:
        """Greedy-decode the wrong pairs to show what the model actually answers."""
        if len(ids) == 0:
            return []
        seq = self.tokens[ids]
        with evaluating(model), rt.autocast():
            out = generate(model, seq[:, :PROMPT_LEN].to(rt.device), ANSWER_LEN)
        rows = []
        for i, pair in enumerate(ids.tolist()):
            a, b = divmod(pair, N)
            digits = TOKENIZER.decode(out[i, PROMPT_LEN:].tolist())
            rows.append({"prompt": f"{a:03d}+{b:03d}=", "expected": a + b,
                         "model_output": digits, "model_answer": read_answer(digits, self.cfg.answer)})
        return rows
