"""The progress callback every long step reports through.

`progress(done, total, label)`: `label` is the phase (`statistics`,
`sensitivity`, `candidates`, `writing`), or `PHASE: numbers` for a phase that
reports numbers with each update (the joint optimizer's `l2c: loss …`). The
CLI draws one bar per phase; library code never prints.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int, str], None]

STATISTICS = "statistics"  # calibration samples run through the model
SENSITIVITY = "sensitivity"  # weights probed with noise
CANDIDATES = "candidates"  # weights whose candidates are fitted
WRITING = "writing"  # weights encoded and written
