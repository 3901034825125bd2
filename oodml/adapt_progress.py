"""Progress and estimated cost of a few-shot adaptation, counted in episode-iterations.

An adaptation trains E episodes for I_e iterations each; its work is the sum of the I_e (one batched step of
``finetune-last`` advances every episode still training, so it counts as that many).  :class:`AdaptationMeter`
shows that count on a :class:`oodml.progress.Stage` (a bar on a terminal, one line when piped) with the
episodes done as its note, and once it has timed a short warm-up (the first :data:`WARMUP_S` seconds or
:data:`WARMUP_UPDATES` updates of the real run, after the first update, which pays one-time costs) it
extrapolates the whole adaptation's time and, when that is at least :data:`LONG_S` seconds, says so on one
line before most of the work is done::

    finetune-last level 3: about 2.4 min for 20 episodes (25,000 iterations; timed over the first 120)

The extrapolation is linear in the work left; a batched run whose short episodes finish early gets cheaper
per step, so the figure is an upper estimate there.  ``set_quiet`` / ``OODML_QUIET`` silence it with the bars.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .progress import Stage, is_quiet

#: an adaptation estimated to take at least this many seconds says so before it runs on
LONG_S = 30.0
#: the warm-up the estimate is timed over: this many seconds, or this many updates, whichever comes first
WARMUP_S, WARMUP_UPDATES = 1.0, 50


def duration(seconds: float) -> str:
    """``seconds`` as a person reads it: ``"45 s"``, ``"2.4 min"``, ``"1.3 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_line(desc: str, episodes: int, total: int, timed: int, seconds: float) -> str:
    """The line announcing an adaptation's estimated time, ``seconds``, for ``total`` episode-iterations of
    ``episodes`` episodes, extrapolated from ``timed`` of them."""
    return (f"{desc}: about {duration(seconds)} for {episodes} episode"
            f"{'s' if episodes != 1 else ''} ({total:,} iterations; timed over the first {timed:,})")


class AdaptationMeter:
    """Counts an adaptation's episode-iterations and episodes, and says its estimated time when long.

    Args:
        desc: what adapts, e.g. ``"finetune-last level 3"``.
        episodes: episodes it trains.
        total: episode-iterations in all (the sum of each episode's iterations).
    """

    def __init__(self, desc: str, episodes: int, total: int) -> None:
        self.desc, self.episodes, self.total = desc, episodes, total
        self.stage = Stage(desc, total=total, unit="it")
        self.done_episodes, self._start = 0, time.monotonic()
        self.estimate: float | None = None     # seconds, once the warm-up is timed
        self._warmup: tuple[float, int] | None = None

    def update(self, iterations: int) -> None:
        """Count ``iterations`` more episode-iterations done (a batched step: one per training episode)."""
        self.stage.update(iterations)
        now = time.monotonic()
        if self._warmup is None:            # the first step pays one-time costs: time from its end
            self._warmup = (now, self.stage.n)
            return
        if self.estimate is None:
            start, before = self._warmup
            timed = self.stage.n - before
            if now - start >= WARMUP_S or timed >= WARMUP_UPDATES:
                self.estimate = (start - self._start) + (now - start) / timed * (self.total - before)
                if self.estimate >= LONG_S and not is_quiet():
                    self._say(estimate_line(self.desc, self.episodes, self.total, timed, self.estimate))

    def episode_done(self, count: int = 1) -> None:
        """Count ``count`` more episodes finished."""
        self.done_episodes += count
        self.stage.set_postfix_str(f"{self.done_episodes}/{self.episodes} episodes", refresh=False)

    @staticmethod
    def _say(line: str) -> None:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)   # above a bar on a terminal, a plain line elsewhere


@contextmanager
def metered(desc: str, episodes: int, total: int) -> Iterator[AdaptationMeter]:
    """An :class:`AdaptationMeter` for a ``with`` block: its stage closes (its line written off a terminal)
    when the block completes and is abandoned when it raises."""
    meter = AdaptationMeter(desc, episodes, total)
    try:
        yield meter
    except BaseException:
        meter.stage.abandon()
        raise
    meter.stage.close()
