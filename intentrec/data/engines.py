"""Where the partitions of a partitioned preparation run (``data.engine``).

A pass of ``partitioned.py`` is one function applied to every partition, each call
independent of the others and returning a small summary that the driver reduces. An engine
maps such a function over the partitions and yields the results **in partition order**,
so the reduction (and hence the cache) does not depend on the engine:

- ``local``: one partition after another in this process (bounded memory: one partition);
- ``ray``: one Ray task per partition (``pip install ray``; imported only here, so the
  single-machine path never needs it). ``data.engine_address`` names a running cluster
  (``ray start --head`` on a node, then ``auto`` or ``ray://host:10001``); without it Ray
  starts on this machine with all its CPUs. Each task reads its partition's files and
  writes its shard itself, so on a cluster ``data.cache_dir`` must be storage every node
  sees (NFS, a parallel file system); the driver only moves the summaries.

Ray's scheduler, not ours, decides where tasks run and retries a task whose worker dies,
which is why we hand partitions to it rather than writing a process pool by hand.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from intentrec.config import ENGINES
from intentrec.data.errors import DataError

log = logging.getLogger(__name__)


class Engine:
    """Maps a function over partitions; results in the order of ``items``."""

    name = "local"

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *shared: Any) -> Iterator[Any]:
        """``fn(item, *shared)`` for each item, yielded in order (``shared``: the same
        arguments for every call, e.g. the pass's global summary)."""
        for item in items:
            yield fn(item, *shared)

    def close(self) -> None:
        """Release what the engine started (nothing, here)."""


class RayEngine(Engine):
    """One Ray task per partition; ``shared`` is put in Ray's object store once."""

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise DataError(
                "config key 'data.engine': 'ray' needs Ray installed (pip install 'ray>=2.40')"
            ) from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            # log_to_driver off: workers' log lines would interleave with the driver's.
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
            self._started = True
        log.info("data engine: Ray with %s CPUs", ray.cluster_resources().get("CPU", "?"))

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *shared: Any) -> Iterator[Any]:
        ray = self._ray
        refs = [ray.put(value) for value in shared]
        # One CPU per task and polars told so: its default of a thread per core of the
        # node, in every task at once, oversubscribes the node's cores.
        env = {"POLARS_MAX_THREADS": "1"}
        task = ray.remote(num_cpus=1, runtime_env={"env_vars": env})(fn)
        pending = [task.remote(item, *refs) for item in items]
        done = 0
        try:
            for future in pending:  # in order; Ray runs them as CPUs free up
                try:
                    yield ray.get(future)
                except ray.exceptions.RayTaskError as err:
                    # The task's own error (a DataError naming the file or key), not Ray's
                    # wrapper with the worker's traceback.
                    cause = getattr(err, "cause", None)
                    if isinstance(cause, Exception):
                        raise cause from None
                    raise
                done += 1
        finally:  # an error, or the caller stopped: the tasks left must not write on
            for future in pending[done:]:
                ray.cancel(future, force=True)

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()


def make_engine(data_cfg: Any) -> Engine:
    """The engine ``data.engine`` names (``data.engine_address``: Ray's cluster)."""
    name = str(getattr(data_cfg, "engine", "local"))
    if name == "ray":
        return RayEngine(getattr(data_cfg, "engine_address", None))
    if name != "local":
        raise DataError(f"config key 'data.engine': {name!r} is not one of {list(ENGINES)}")
    return Engine()
