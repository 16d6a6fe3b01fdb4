"""speedrun: train small GPT language models from scratch, fast, and prove how fast."""

__version__ = "0.1.0"
