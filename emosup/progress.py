"""Progress with an ETA for every phase that takes more than a few seconds.

On a terminal a `tqdm` bar on stderr; otherwise (logs, batch jobs) one INFO line every
`every` seconds with done/total, rate and ETA, and a last line with the total time. Only
process 0 of a multi-host job reports.
"""
import sys
import time

from absl import logging


def _terminal():
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """`with Progress("embed", total, unit="utt") as p: ... p.update(n)`."""

    def __init__(self, name, total, *, unit="it", every=10.0, enabled=True):
        import jax

        self.name, self.total, self.unit, self.every = name, int(total), unit, every
        self.enabled = enabled and jax.process_index() == 0
        self.done, self.start = 0, time.time()
        self._last = self.start
        self._bar = None
        if self.enabled and _terminal():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=name, unit=unit, leave=False, file=sys.stderr)

    def update(self, n=1):
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.time()
        if now - self._last >= self.every and self.done < self.total:
            rate = self.done / max(now - self.start, 1e-9)
            logging.info("%s: %d/%d %s, %.1f %s/s, ETA %.0fs", self.name, self.done, self.total, self.unit,
                         rate, self.unit, (self.total - self.done) / max(rate, 1e-9))
            self._last = now

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.enabled and time.time() - self.start >= self.every:
            logging.info("%s: %d %s in %.0fs", self.name, self.done, self.unit, time.time() - self.start)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def track(iterable, name, total=None, **kwargs):
    """Iterates `iterable`, reporting each item as done."""
    total = len(iterable) if total is None else total
    with Progress(name, total, **kwargs) as p:
        for item in iterable:
            yield item
            p.update(1)
