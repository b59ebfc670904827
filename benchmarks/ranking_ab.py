"""Speed-up of ``intentrec/ranking.py`` at one git revision against another, in one process.

    python -m benchmarks.ranking_ab BEFORE AFTER [--pairs 80] [--items 50000] [--per-call 512]

On a shared machine the speed of the whole machine drifts by tens of percent between
minutes, so two ``make bench`` runs of two revisions compare the hours, not the code. Here
both revisions' ``float32_target_ranks`` run in the same process, one call of ``per_call``
random targets each in turn (the same calls as the eval bench: d = 64, no bias, chunk
65536), and each pair of calls gives a ratio of times. The pairs run in both orders (half
with BEFORE first), because the second call of a pair was measured ~3% faster whatever the
code; the speed-up printed is the geometric mean of the two orders' median ratios; each
revision's fastest call is printed too. Ranks of the two revisions are checked equal first.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from benchmarks.eval_bench import CHUNK, D


def load_revision(revision: str, folder: Path) -> ModuleType:
    """``intentrec/ranking.py`` as it is at ``revision`` (``WORKTREE``: the file on disk)."""
    if revision == "WORKTREE":
        source = (Path(__file__).resolve().parents[1] / "intentrec" / "ranking.py").read_text()
    else:
        shown = subprocess.run(
            ["git", "show", f"{revision}:intentrec/ranking.py"], capture_output=True, text=True
        )
        if shown.returncode:
            sys.exit(f"ranking_ab: no intentrec/ranking.py at revision {revision!r}")
        source = shown.stdout
    name = f"ranking_at_{len(list(folder.iterdir()))}"
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="git revision (or WORKTREE)")
    parser.add_argument("after", help="git revision (or WORKTREE)")
    parser.add_argument("--pairs", type=int, default=80, help="pairs of calls per order")
    parser.add_argument("--items", type=int, default=50_000, help="catalogue size V")
    parser.add_argument("--per-call", type=int, default=512, help="targets per call")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(args.items, D, generator=gen)
    calls = 8  # different targets per call, as in an evaluation
    hidden = torch.randn(calls * args.per_call, D, generator=gen)
    targets = torch.randint(1, args.items, (calls * args.per_call,), generator=gen)

    with tempfile.TemporaryDirectory() as folder:
        before = load_revision(args.before, Path(folder))
        after = load_revision(args.after, Path(folder))

        def call(module: ModuleType, i: int) -> tuple[float, torch.Tensor]:
            rows = slice(i % calls * args.per_call, (i % calls + 1) * args.per_call)
            t = targets[rows]
            start = time.perf_counter()
            ranks = module.float32_target_ranks(
                hidden[rows], weight, None, t, t[:, None], CHUNK, None, module.max_item_norm(weight)
            )
            return time.perf_counter() - start, ranks

        for i in range(calls):
            if not torch.equal(call(before, i)[1], call(after, i)[1]):
                sys.exit(f"ranking_ab: {args.before} and {args.after} rank call {i} differently")
        medians = []
        fastest = {id(before): math.inf, id(after): math.inf}  # seconds of the fastest call
        for first, second in ((before, after), (after, before)):
            ratios = []  # time of BEFORE / time of AFTER
            for i in range(args.pairs):
                t_first, _ = call(first, i)
                t_second, _ = call(second, i)
                fastest[id(first)] = min(fastest[id(first)], t_first)
                fastest[id(second)] = min(fastest[id(second)], t_second)
                ratios.append(t_first / t_second if first is before else t_second / t_first)
            medians.append(statistics.median(ratios))
            order = "before first" if first is before else "after first"
            low, mid, high = statistics.quantiles(ratios, n=4)
            print(f"{order}: median {mid:.3f} (quartiles {low:.3f}-{high:.3f}), {args.pairs} pairs")
        speedup = math.sqrt(medians[0] * medians[1])
        for name, module in ((args.before, before), (args.after, after)):
            print(f"{name}: fastest call {args.per_call / fastest[id(module)]:,.0f} targets/s")
        print(
            f"speed-up of {args.after} over {args.before}: {speedup:.3f}x "
            f"(V={args.items:,}, {args.per_call} targets per call, {args.threads} thread(s))"
        )


if __name__ == "__main__":
    main()
