"""The two files `speedrun export --to hf` copies into a folder when no transformers class
computes the model exactly: `configuration_speedrun.py` and `modeling_speedrun.py`. They
import torch and transformers only, never speedrun, so the folder loads anywhere with
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`. Nothing here is
imported by speedrun itself; the export copies the files as they are."""

from pathlib import Path

FILES = ("configuration_speedrun.py", "modeling_speedrun.py")
HERE = Path(__file__).parent
