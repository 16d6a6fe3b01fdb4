"""Fine-tuning on conversations: the synthetic task mixture plus the user's own.

Each conversation is rendered through the chat template; the loss falls only
on the tokens the assistant writes. Rows are packed with whole conversations
(each opening with its beginning-of-sequence token) until the next one would
not fit, so little compute goes to padding, and padding carries no loss.
"""

from __future__ import annotations

import math

import torch

from ..chat.conversations import TASKS, mixture
from ..chat.user_conversations import load_conversations
from ..chat.template import BOS, ChatTemplate
from ..config import ChatData, Config
from ..data import DataError
from ..device import Runtime
from ..model import IGNORE_INDEX, evaluating
from ..tokenizer import load_tokenizer_file
from . import Task


def identity_options(cfg: ChatData) -> dict:
    return {"name": cfg.identity_name, "creator": cfg.identity_creator, "description": cfg.identity_description}


def task_weights(cfg: ChatData) -> dict[str, float]:
    """The mixture's weights: the config's field of each registered task, where above 0."""
    return {name: getattr(cfg, name) for name in TASKS if getattr(cfg, name) > 0}


class ChatTask(Task):
    name = "chat"

    @classmethod
    def from_config(cls, cfg: Config) -> "ChatTask":
        return cls(cfg.data, block_size=cfg.model.block_size, seed=cfg.train.seed)

    def __init__(self, cfg: ChatData, block_size: int, seed: int):
        if not cfg.tokenizer_file:
            raise DataError("the chat task needs data.tokenizer_file (the chat pipeline's tokenizer.json); "
                            "run `speedrun chat-pipeline` or set it")
        self.cfg, self.block_size, self.seed = cfg, block_size, seed
        self.tokenizer = load_tokenizer_file(cfg.tokenizer_file)
        self.template = ChatTemplate(self.tokenizer)
        self.pad = self.tokenizer.token_id(BOS)
        weights, identity = task_weights(cfg), identity_options(cfg)
        train = [item.messages for item in mixture(weights, cfg.train_items, seed, "train", identity=identity)]
        if cfg.conversations:
            train += load_conversations(cfg.conversations) * cfg.conversations_repeat
        if not train:
            raise DataError("no training conversations: give data.conversations or a task weight above 0")
        self.train_rows = self.render_all(train, "training")
        # validation (val_loss, best.safetensors) comes from the "val" split, which shares no
        # key with the "test" items the task evaluation asks, nor with training
        self.val_items = mixture(weights, cfg.val_items, seed, "val", identity=identity)
        self.val_x, self.val_y = self.to_xy(self.pack(self.render_all([i.messages for i in self.val_items],
                                                                       "validation")))

    def render_all(self, conversations: list[list[dict]], split: str) -> list[tuple[list[int], list[int]]]:
        rows = [self.template.render(c) for c in conversations]
        longest = max(len(ids) for ids, _ in rows)
        if longest > self.block_size + 1:
            raise DataError(f"a {split} conversation is {longest} tokens, longer than model.block_size + 1 = "
                            f"{self.block_size + 1}; raise model.block_size or shorten the conversation")
        return rows

    def to_xy(self, rows: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed rows of conversations -> inputs and targets (IGNORE_INDEX where no loss)."""
        T = self.block_size
        x = torch.full((len(rows), T + 1), self.pad, dtype=torch.long)
        y = torch.full((len(rows), T + 1), IGNORE_INDEX, dtype=torch.long)
        for r, (ids, mask) in enumerate(rows):
            ids_t, mask_t = torch.tensor(ids), torch.tensor(mask, dtype=torch.bool)
            x[r, :len(ids)] = ids_t
            y[r, :len(ids)] = torch.where(mask_t, ids_t, IGNORE_INDEX)
        return x[:, :-1], y[:, 1:]

    def pack(self, pieces) -> list[tuple[list[int], list[int]]]:
        """Concatenate (ids, mask) pieces into rows of at most block_size + 1 tokens."""
        rows, ids, mask = [], [], []
        for piece_ids, piece_mask in pieces:
            if ids and len(ids) + len(piece_ids) > self.block_size + 1:
                rows.append((ids, mask))
                ids, mask = [], []
            ids, mask = ids + piece_ids, mask + piece_mask
        if ids:
            rows.append((ids, mask))
        return rows

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows filled with randomly drawn conversations; the one that does not fit is left out."""
        rows = []
        for _ in range(batch_size):
            ids, mask = [], []
            while True:
                k = int(torch.randint(len(self.train_rows), (1,), generator=generator))
                piece_ids, piece_mask = self.train_rows[k]
                if len(ids) + len(piece_ids) > self.block_size + 1:
                    break
                ids, mask = ids + piece_ids, mask + piece_mask
            rows.append((ids, mask))
        return self.to_xy(rows)

    @torch.inference_mode()
    def val_loss(self, model, rt: Runtime, batch_size: int = 32) -> float:
        total, count = 0.0, 0
        with evaluating(model):
            for i in range(0, len(self.val_x), batch_size):
                x = self.val_x[i:i + batch_size].to(rt.device)
                y = self.val_y[i:i + batch_size].to(rt.device)
                with rt.autocast():
                    logits = model(x)
                total += torch.nn.functional.cross_entropy(
                    logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=IGNORE_INDEX,
                    reduction="sum").item()
                count += int((y != IGNORE_INDEX).sum())
        return total / max(count, 1)

    def evaluate(self, model, rt: Runtime, step: int) -> dict:
        loss = self.val_loss(model, rt)
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50.0))}

    def final_metrics(self, model, rt: Runtime, step: int) -> dict:
        return self.evaluate(model, rt, step)
