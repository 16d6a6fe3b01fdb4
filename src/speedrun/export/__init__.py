"""Export a trained model to formats other tools load: a transformers folder, or GGUF.

    mapping   which transformers class computes what our model computes, and where each tensor goes
    remote    the modeling code an export carries when no transformers class computes the model
    to_hf     `--to hf`: the transformers folder (safetensors, config, tokenizer, chat template)
    to_gguf   `--to gguf`: llama.cpp's GGUF file (its gpt2, arcee and apertus architectures)
    folder    `speedrun export` itself: writes the folder, checks its logits, and loads one back
"""

from .folder import PARITY_TOLERANCE, export_run, is_export, load_export, read_export
from .mapping import hf_architecture

__all__ = ["PARITY_TOLERANCE", "export_run", "hf_architecture", "is_export", "load_export", "read_export"]
