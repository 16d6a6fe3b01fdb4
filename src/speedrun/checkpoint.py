"""Checkpoints: one safetensors file holding everything, written atomically.

Model weights, optimizer state and RNG states are tensors; the rest (config,
step, clock, tokenizer, the shape of the optimizer state) is JSON in the
file's metadata. safetensors parses no code, so loading a checkpoint from an
untrusted source cannot execute anything. A SHA-256 of every tensor's bytes is
stored too, so a corrupted or truncated file is named as such, not half-loaded.
The file is written to a temporary name, fsynced and renamed over the old one:
a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

FORMAT = "speedrun-checkpoint-1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, with the reason and what to do."""


def _flatten(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """Replace every tensor in a nest of dicts/lists by a reference into `tensors`."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        return {"__dict__": [[_key(k), _flatten(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    return obj


def _key(k: Any) -> Any:
    if isinstance(k, (str, int)):
        return k
    raise TypeError(f"checkpoint dict keys must be str or int, got {type(k).__name__}")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, dict) and "__tuple__" in obj:
        return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(path: Path, model_state: dict, state: dict) -> None:
    """Write model weights plus any nest of tensors and JSON values in `state`."""
    tensors: dict[str, torch.Tensor] = {}
    model_refs = _flatten(dict(model_state), tensors, "model")
    rest = _flatten(state, tensors, "state")
    meta = {"format": FORMAT, "model": model_refs, "state": rest, "sha256": _digest(tensors)}
    blob = st_save(tensors, metadata={"speedrun": json.dumps(meta)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # make the rename itself durable
    finally:
        os.close(fd)


def load_checkpoint(path: Path) -> tuple[dict, dict]:
    """Return (model state dict, state) or raise CheckpointError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; check the run directory path")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(json.loads(data[8:8 + header_len])["__metadata__"]["speedrun"])
    except (SafetensorError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupted or truncated ({e}); "
                              "resume from another checkpoint or retrain") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a speedrun checkpoint (format {meta.get('format')!r})")
    if _digest(tensors) != meta["sha256"]:
        raise CheckpointError(f"checkpoint {path} failed its checksum (the file is damaged); "
                              "resume from another checkpoint or retrain")
    return _unflatten(meta["model"], tensors), _unflatten(meta["state"], tensors)
