"""Shared pieces of the benchmark harness: figure records, output files, timing, memory.

A *figure* is one measured number::

    {"section": "train", "name": "train/sasrec/fp32/ms_per_step", "value": 41.2,
     "unit": "ms", "params": {"batch": 256, ...}, "device": "cpu",
     "device_name": "...", "threads": 2, "quick": false}

:class:`Reporter` prints each figure as one JSON line on stdout as soon as it is measured,
appends it to ``results.jsonl`` (so a run killed by a timeout keeps what it measured) and,
at the end, prints a rich table and writes ``results.md``. Progress goes to stderr.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SECTIONS = ("data", "train", "eval", "loss", "recommend", "quality", "mfu")

# Dense bf16 tensor-core peak (TFLOP/s, no sparsity) by a substring of the device name.
# H100 SXM and H200 share the same compute (989.4 TFLOP/s); H100 PCIe is lower.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
)


def log(message: str) -> None:
    """Progress line on stderr (stdout carries the JSON figures only)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    return f"{cpu_name()} ({os.cpu_count()} logical cores)"


def bf16_peak_tflops(name: str) -> float | None:
    """The card's dense bf16 peak, or None when unknown (MFU is then not reported)."""
    for key, peak in BF16_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return peak
    return None


def torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


@dataclass
class Reporter:
    """Collects figures: JSON line on stdout + ``results.jsonl`` now, table + md at the end."""

    out_dir: Path
    device: str = "cpu"
    quick: bool = False
    append: bool = False
    records: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.out_dir / "results.jsonl"
        self.notes_file = self.out_dir / "notes.txt"
        if not self.append:
            self.jsonl.write_text("")
            self.notes_file.unlink(missing_ok=True)
        else:
            # An appending run that measures nothing (mfu without CUDA, gpu.sh's first
            # section) still leaves a results.jsonl for its summary to read.
            self.jsonl.touch()
        self.device_name = device_name(self.device)

    def emit(
        self,
        section: str,
        name: str,
        value: float | int | None,
        unit: str,
        params: dict[str, Any] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Record one figure (``value`` None only with an ``error`` in ``extra``)."""
        if isinstance(value, float):
            # NaN / inf are not JSON: a figure that could not be computed is null.
            value = float(f"{value:.6g}") if math.isfinite(value) else None
        record = {
            "section": section,
            "name": name,
            "value": value,
            "unit": unit,
            "params": params or {},
            "device": self.device,
            "device_name": self.device_name,
            "threads": torch_threads(),
            "quick": self.quick,
            **extra,
        }
        self.records.append(record)
        line = json.dumps(record, default=str)
        print(line, flush=True)
        with self.jsonl.open("a") as fh:
            fh.write(line + "\n")
        return record

    def note(self, text: str) -> None:
        """A line for the reader (e.g. a skipped section); not a figure."""
        self.notes.append(text)
        print(text, file=sys.stderr, flush=True)
        with self.notes_file.open("a") as fh:
            fh.write(text + "\n")

    def error(self, section: str, name: str, err: BaseException) -> None:
        """A figure that failed: recorded with value None so nothing is silently missing."""
        message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        self.emit(section, name, None, "", error=message)
        log(f"{name} failed: {message}")

    # -- end of run ----------------------------------------------------------------------
    def all_records(self) -> list[dict[str, Any]]:
        """This run's figures, or in append mode every figure in ``results.jsonl``."""
        if not self.append:
            return list(self.records)
        out = []
        for line in self.jsonl.read_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
        return out

    def all_notes(self) -> list[str]:
        if self.notes_file.exists():
            return [n for n in self.notes_file.read_text().splitlines() if n.strip()]
        return list(self.notes)

    def finish(self, table: bool = True) -> None:
        """Write ``results.md`` (every figure of ``results.jsonl`` in append mode) and print
        the table."""
        records, notes = self.all_records(), self.all_notes()
        (self.out_dir / "results.md").write_text(markdown(records, notes, self.header()))
        if table:
            print_table(records, notes)

    def header(self) -> dict[str, str]:
        import torch

        return {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "device": f"{self.device} ({self.device_name})",
            "torch": torch.__version__,
            "threads": str(torch_threads()),
            "python": platform.python_version(),
            "commit": git_commit(),
            "mode": "quick" if self.quick else "full",
        }


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        magnitude = abs(value)
        if magnitude >= 1e5:
            return f"{value:,.0f}"
        if magnitude >= 100:
            return f"{value:,.1f}"
        if magnitude >= 1:
            return f"{value:.3g}" if magnitude < 10 else f"{value:.1f}"
        return f"{value:.3g}"
    return str(value)


def format_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def _row(record: dict[str, Any], common: dict[str, Any]) -> list[str]:
    own = {k: v for k, v in record.get("params", {}).items() if common.get(k, _MISSING) != v}
    if record.get("error"):
        return [record.get("name", ""), "ERROR", "", record["error"]]
    value = format_value(record.get("value"))
    return [record.get("name", ""), value, record.get("unit", ""), format_params(own)]


_MISSING = object()
COLUMNS = ("figure", "value", "unit", "other parameters")


def group_by_section(
    records: list[dict[str, Any]],
) -> list[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
    """(section, its records, params shared by all of them) in order of first appearance."""
    sections: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        sections.setdefault(record.get("section", "?"), []).append(record)
    out = []
    for section, recs in sections.items():
        # A parameter is common when every figure that states it states the same value.
        values: dict[str, list[Any]] = {}
        for r in recs:
            for k, v in r.get("params", {}).items():
                values.setdefault(k, []).append(v)
        common = {
            k: vs[0]
            for k, vs in values.items()
            if len(vs) > 1
            and all(json.dumps(v, default=str) == json.dumps(vs[0], default=str) for v in vs)
        }
        out.append((section, recs, common))
    return out


def _where(records: list[dict[str, Any]]) -> str:
    seen = []
    for r in records:
        text = f"{r.get('device_name') or r.get('device')}, {r.get('threads')} torch threads"
        if text not in seen:
            seen.append(text)
    return "; ".join(seen)


def markdown(records: list[dict[str, Any]], notes: list[str], header: dict[str, str]) -> str:
    lines = ["# IntentRec benchmarks", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    for section, recs, common in group_by_section(records):
        lines += ["", f"## {section}", ""]
        lines.append(
            f"On {_where(recs)}." + (f" Common: {format_params(common)}." if common else "")
        )
        lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for record in recs:
            cells = [c.replace("|", "\\|") for c in _row(record, common)]
            lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def print_table(records: list[dict[str, Any]], notes: list[str]) -> None:
    """The human-readable tables, one per section, after the JSON lines (rich)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a dependency
        for _, recs, common in group_by_section(records):
            for record in recs:
                print("  ".join(_row(record, common)))
        for n in notes:
            print(n)
        return
    console = Console(width=max(120, Console().width), soft_wrap=False)
    console.rule("IntentRec benchmarks")
    for section, recs, common in group_by_section(records):
        caption = f"on {_where(recs)}" + (f"\ncommon: {format_params(common)}" if common else "")
        table = Table(title=f"{section}", caption=caption, caption_justify="left")
        table.add_column(COLUMNS[0], no_wrap=True)
        table.add_column(COLUMNS[1], justify="right", no_wrap=True)
        table.add_column(COLUMNS[2], no_wrap=True)
        table.add_column(COLUMNS[3], overflow="fold")
        for record in recs:
            table.add_row(*_row(record, common))
        console.print(table)
    for n in notes:
        console.print(n, markup=False, highlight=False)


# ---------------------------------------------------------------------------------------
# Synthetic data of a given size
# ---------------------------------------------------------------------------------------
SYNTHETIC_EVENTS_PER_USER = 60  # the defaults' mean events per user


def synthetic_size(events: int) -> int:
    """Users for about ``events`` synthetic events at the default events per user."""
    return max(1, round(events / SYNTHETIC_EVENTS_PER_USER))


def synthetic_overrides(events: int, items: int, cache_dir: Path) -> list[str]:
    """Config overrides for synthetic data of about ``events`` events over ``items`` items,
    cached in ``cache_dir`` (a fresh folder, so nothing is reused between sizes)."""
    return [
        "data.name=synthetic",
        f"data.synthetic.users={synthetic_size(events)}",
        f"data.synthetic.items={items}",
        f"data.synthetic.events_per_user={SYNTHETIC_EVENTS_PER_USER}",
        f"data.cache_dir={cache_dir}",
    ]


# ---------------------------------------------------------------------------------------
# Timing and memory
# ---------------------------------------------------------------------------------------
def time_steps(
    step: Callable[[], Any], warmup: int, steps: int, sync: Callable[[], None] | None = None
) -> list[float]:
    """Wall seconds of each of ``steps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    if sync:
        sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def _vm_hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: ``5 > /proc/self/clear_refs``); False if unable.

    Without it a peak reached earlier (importing torch maps and drops a few hundred MB)
    would hide the peak of the code measured afterwards.
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return _vm_hwm_bytes() is not None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since start or the last ``reset_peak_rss``.

    Linux: VmHWM (which the reset clears); elsewhere ``ru_maxrss`` (KiB on Linux, bytes on
    macOS), the peak since the process started.
    """
    hwm = _vm_hwm_bytes()
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def current_rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # pragma: no cover - psutil is a dependency
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_base(device: str) -> int:
    """Start a peak-memory measurement: bytes in use now (CUDA allocated, or RSS on CPU),
    with the device's peak counter reset so that only what follows counts."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        return int(base)
    base = current_rss_bytes()
    reset_peak_rss()
    return base


def peak_above(device: str, base: int) -> int:
    """Peak bytes above ``base`` (from :func:`memory_base`) since it was taken, >= 0."""
    if device == "cuda":
        import torch

        peak = torch.cuda.max_memory_allocated()
    else:
        peak = peak_rss_bytes()
    return max(int(peak) - base, 0)


def worker_main(worker: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """The worker end of :func:`run_worker`: ``worker`` of the JSON arguments in argv[1],
    printed as one JSON line (a bench module's ``if __name__ == "__main__"``)."""
    print(json.dumps(worker(json.loads(sys.argv[1]))), flush=True)


def run_worker(module: str, args: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run ``python -m module '<json args>'`` in a fresh process; return its last JSON line.

    A fresh process per size makes peak RSS (ru_maxrss of that process) a per-size figure.
    """
    cmd = [sys.executable, "-m", module, json.dumps(args)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).parent.parent
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{module} exited {proc.returncode}: {tail[0]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"{module} printed no result")
    return json.loads(lines[-1])


def parse_count(text: str) -> int:
    """``"10M"`` -> 10_000_000, ``"50k"`` -> 50_000, ``"2000"`` -> 2000."""
    text = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000, "b": 1_000_000_000}
    if text and text[-1] in scale:
        return int(float(text[:-1]) * scale[text[-1]])
    return int(float(text))


def human_count(n: int) -> str:
    for div, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if n >= div and n % (div // 10 or 1) == 0:
            value = n / div
            return f"{value:g}{suffix}"
    return str(n)
