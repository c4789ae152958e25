"""Progress lines for long phases: what is done, the rate and the time left, at least every 30 s.

  with Progress("AIS", total=500) as progress:
    for batch in batches:
      ...
      progress.advance(len(batch))

A thread prints the line every `every` seconds while the phase runs, so a compiled
call that takes minutes still shows the phase is alive; the end of the phase prints
its total time. Only the writing process prints (`hosts.is_writer`).
"""

import threading
import time

from jaxvae import hosts

EVERY = 30.0


def _duration(seconds: float) -> str:
  seconds = max(0.0, seconds)
  if seconds < 120:
    return f"{seconds:.0f} s"
  if seconds < 7200:
    return f"{seconds / 60:.1f} min"
  return f"{seconds / 3600:.1f} h"


class Progress:
  """Prints `label: done/total unit, rate, time left` every `every` seconds while active (see the module)."""

  def __init__(self, label: str, total: int, unit: str = "images", every: float = EVERY):
    self.label, self.total, self.unit, self.every = label, int(total), unit, every
    self.done = 0
    self._start = None
    self._stop = threading.Event()
    self._thread = None
    self._print = hosts.is_writer()

  def line(self) -> str:
    """The current progress line."""
    elapsed = time.perf_counter() - self._start
    text = f"{self.label}: {self.done:,}/{self.total:,} {self.unit}"
    if self.done:
      rate = self.done / elapsed
      return text + f", {rate:.3g} {self.unit}/s, about {_duration((self.total - self.done) / rate)} left"
    return text + f", first batch running for {_duration(elapsed)}"

  def advance(self, count: int) -> None:
    self.done = min(self.total, self.done + int(count))

  def _run(self) -> None:
    while not self._stop.wait(self.every):
      print(self.line(), flush=True)

  def __enter__(self) -> "Progress":
    self._start = time.perf_counter()
    if self._print:
      self._thread = threading.Thread(target=self._run, name=f"progress: {self.label}", daemon=True)
      self._thread.start()
    return self

  def __exit__(self, exc_type, *exc) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if self._print and exc_type is None:
      print(f"{self.label}: {self.total:,} {self.unit} in {_duration(time.perf_counter() - self._start)}", flush=True)
