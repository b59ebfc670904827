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

- staged (``intentrec data prepare ... --step S [--partition i/N]``, :class:`StagedEngine`):
  one pass of one partition per command, for a batch scheduler's job array (SLURM's
  ``--array``): the result of each task is a file, and a later step reads every
  partition's result of the passes before it (each step's own reduction is the driver's,
  recomputed: it is small), so the cache is the single-machine one as well.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
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


# The passes of a partitioned prepare, in order, by their task (partitioned.py), and the
# steps of a staged one: the scatter of the input into partition files, each pass, the merge.
PASSES = {"_keep_task": "keep", "_collect_task": "collect", "_build_task": "build"}
STEPS = ("scatter", *PASSES.values(), "merge")


@dataclass(frozen=True)
class Step:
    """One command of a staged prepare: ``name`` in :data:`STEPS`; ``partition`` (0-based)
    for the passes, None for scatter and merge."""

    name: str
    partition: int | None = None


def parse_step(name: str, partition: str | None, partitions: int) -> Step:
    """``--step name --partition i/N`` checked against ``data.partitions`` (one-line
    errors naming the flag). ``i`` counts from 0, as SLURM's ``$SLURM_ARRAY_TASK_ID``."""
    if name not in STEPS:
        raise DataError(f"--step: {name!r} is not one of {list(STEPS)}")
    if name in ("scatter", "merge"):
        if partition is not None:
            raise DataError(f"--partition: --step {name} runs once, for every partition")
        return Step(name)
    if partition is None:
        raise DataError(f"--partition: --step {name} needs --partition i/N (i from 0)")
    index, _, count = partition.partition("/")
    if not (index.isdigit() and count.isdigit()):
        raise DataError(f"--partition: {partition!r} is not i/N (e.g. 3/8)")
    if int(count) != partitions:
        raise DataError(
            f"--partition: {partition!r} has N = {count}, config key 'data.partitions' is "
            f"{partitions}"
        )
    if not 0 <= int(index) < partitions:
        raise DataError(f"--partition: {partition!r}: i must be in 0..{partitions - 1}")
    return Step(name, int(index))


class StepDone(Exception):
    """Raised by :class:`StagedEngine` once its step's work is written: the driver stops."""


class StagedEngine(Engine):
    """Runs the one task of ``step`` and writes its result; yields the results of the
    passes before it from the files earlier steps wrote (``results/<pass>/p<i>.pkl``)."""

    name = "staged"

    def __init__(self, results: Path, step: Step) -> None:
        self.results = results
        self.step = step

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *shared: Any) -> Iterator[Any]:
        name = PASSES[fn.__name__]
        folder = self.results / name
        if self.step.name == name:
            if self.step.partition in items:  # else: no events hashed to it, nothing to do
                result = fn(self.step.partition, *shared)
                folder.mkdir(parents=True, exist_ok=True)
                target = folder / f"p{self.step.partition:05d}.pkl"
                partial = target.with_suffix(f".{os.getpid()}.tmp")
                with open(partial, "wb") as fh:
                    pickle.dump(result, fh, protocol=pickle.HIGHEST_PROTOCOL)
                partial.replace(target)  # a result file is always whole
            raise StepDone
        files = [folder / f"p{item:05d}.pkl" for item in items]
        missing = [item for item, file in zip(items, files) if not file.exists()]
        if missing:
            shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
            raise DataError(
                f"--step {self.step.name}: no {name} result for partition(s) {shown} in "
                f"{folder}: run --step {name} --partition i/N for each of them first"
            )
        for file in files:
            with open(file, "rb") as fh:
                yield pickle.load(fh)


def make_engine(data_cfg: Any) -> Engine:
    """The engine ``data.engine`` names (``data.engine_address``: Ray's cluster)."""
    name = str(getattr(data_cfg, "engine", "local"))
    if name == "ray":
        return RayEngine(getattr(data_cfg, "engine_address", None))
    if name != "local":
        raise DataError(f"config key 'data.engine': {name!r} is not one of {list(ENGINES)}")
    return Engine()
