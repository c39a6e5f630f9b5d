"""Thread pools for per-tensor work (the planner's candidates, the writer's
encodes) that keep BLAS from oversubscribing the cores.

numpy's BLAS starts its own threads in every call. With several worker
threads calling it at once (GPTQ's products, the layer errors), cores ×
workers BLAS threads contend for the cores: MiniLM's candidates took 102 s
on 2 cores that way and 64 s with one BLAS thread per worker. A single
worker keeps BLAS's own threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from threadpoolctl import threadpool_limits


@contextmanager
def worker_pool(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A pool of `workers` threads; while it is open, each BLAS call runs on
    one thread when there are several workers."""
    with ThreadPoolExecutor(workers) as pool:
        if workers > 1:
            with threadpool_limits(limits=1, user_api="blas"):
                yield pool
        else:
            yield pool
