"""What the training loop shows and listens to: a progress bar (or log lines) and stop signals."""

from __future__ import annotations

import signal
import sys


class Progress:
    """A tqdm bar on a terminal, made at the first update; plain log lines every `log_every` steps
    otherwise. `total` None (a time budget, no step cap) shows a count without an end."""

    def __init__(self, total: int | None, enabled: bool):
        self.total, self.enabled, self.bar = total, enabled and sys.stderr.isatty(), None

    @property
    def live(self) -> bool:
        """Whether a bar is on screen, so every step's loss is worth reading."""
        return self.enabled

    def update(self, step: int, text: str, log_line: bool) -> None:
        if self.enabled:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=self.total, initial=step, unit="step", dynamic_ncols=True, leave=True)
            self.bar.n = step
            self.bar.set_postfix_str(text, refresh=True)
        elif log_line:
            print(f"step {step}: {text}", flush=True)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StopSignal:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the end of the step and exits."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
