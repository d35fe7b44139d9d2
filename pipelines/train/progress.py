"""Epoch progress on rank 0: a tqdm bar on a terminal, a throttled log line everywhere else.

Under horovod.spark.run and spark-submit the rank's stderr is a pipe whose lines are prefixed and
forwarded, where a redrawing bar turns into thousands of lines; there we print one line every few
seconds with step, samples/s and ETA instead.
"""

from __future__ import annotations

import sys
import time


class EpochProgress:
    def __init__(self, epoch: int, epochs: int, steps: int, samples_per_step: int, enabled: bool,
                 interval: float = 10.0) -> None:
        self.epoch, self.epochs, self.steps = epoch, epochs, steps
        self.samples_per_step = samples_per_step
        self.enabled = enabled
        self.interval = interval
        self.start = self.last = time.time()
        self.done = 0
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="step", mininterval=1.0,
                            dynamic_ncols=True)

    def update(self, loss: float) -> None:
        self.done += 1
        if not self.enabled:
            return
        rate = self.done * self.samples_per_step / max(time.time() - self.start, 1e-9)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", samples_s=f"{rate:.0f}", refresh=False)
            return
        now = time.time()
        if now - self.last >= self.interval:
            self.last = now
            eta = (self.steps - self.done) * (now - self.start) / self.done
            print(f"[sparkzoo] epoch {self.epoch + 1}/{self.epochs} step {self.done}/{self.steps} "
                  f"({100 * self.done / self.steps:.0f}%) loss={loss:.3f} {rate:.0f} samples/s ETA {eta:.0f}s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
