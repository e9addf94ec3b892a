"""Run meshbox's benchmarks and print one table of ratios (``make bench``).

Discovers bench/bench_*.py, imports each by file path, calls its ``rows()`` and prints every
row: value, the baseline measured in the same run, the ratio, the target and whether it is
met. A module that raises (or returns malformed rows) gets an ERROR row and the others still
run. Exit status: 0 when every module ran, even if targets were missed (the table reports,
it does not gate); 1 when a module crashed; 2 for bad options.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROW_TYPES: dict[str, type | tuple[type, ...]] = {
    "bench": str,
    "metric": str,
    "value": (int, float),
    "unit": str,
    "baseline": str,
    "baseline_value": (int, float),
    "ratio": (int, float),
    "target": str,
    "ok": bool,
}
COLUMNS = ("bench", "metric", "value", "baseline", "baseline value", "ratio", "target", "ok")


class MalformedRowError(ValueError):
    """A bench module returned something that is not a list of well-formed rows."""


def discover(bench_dir: Path, only: str | None) -> list[Path]:
    """bench_*.py files in bench_dir, sorted; `only` selects one by name ('proxy' or 'bench_proxy')."""
    found = sorted(bench_dir.glob("bench_*.py"))
    if only is None:
        return found
    chosen = [p for p in found if only in (p.stem, p.stem.removeprefix("bench_"))]
    if not chosen:
        names = ", ".join(p.stem.removeprefix("bench_") for p in found) or "none"
        raise LookupError(f"--only {only}: no such benchmark (found: {names})")
    return chosen


def check_rows(rows: Any, source: str) -> list[dict[str, Any]]:
    """Return rows if it is a list of dicts with every key of the row contract, else raise naming the fault."""
    if not isinstance(rows, list):
        raise MalformedRowError(f"{source}: rows() returned {type(rows).__name__}, not a list")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise MalformedRowError(f"{source}: row {i} is {type(row).__name__}, not a dict")
        for key, kind in ROW_TYPES.items():
            if key not in row:
                raise MalformedRowError(f"{source}: row {i} ({row.get('metric', '?')}) lacks key {key!r}")
            # bool is an int subclass: only "ok" may be a bool.
            if not isinstance(row[key], kind) or (key != "ok" and isinstance(row[key], bool)):
                raise MalformedRowError(
                    f"{source}: row {i} ({row.get('metric', '?')}): {key} is {type(row[key]).__name__}"
                )
    return rows


def run_module(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """Import one bench module and call rows(); a failure becomes a single ERROR row. Returns (rows, ok)."""
    name = path.stem.removeprefix("bench_")
    try:
        spec = importlib.util.spec_from_file_location(f"meshbox_bench_{name}", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
        return check_rows(module.rows(), path.name), True
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        error = f"ERROR: {type(exc).__name__}: {exc}".replace("\n", " ")
        if len(error) > 300:
            error = error[:297] + "..."  # the whole message and traceback are on stderr
        return [{"bench": name, "metric": error, "value": math.nan, "unit": "", "baseline": "-",
                 "baseline_value": math.nan, "ratio": math.nan, "target": "-", "ok": False}], False


def _number(value: float) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if math.isnan(value):
        return "-"
    if value != 0 and (abs(value) >= 1e7 or abs(value) < 0.01):
        return f"{value:.3g}"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:,.0f}"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a fixed-width text table, one line per row."""
    lines = [
        (
            row["bench"],
            row["metric"],
            f"{_number(row['value'])} {row['unit']}".strip(),
            row["baseline"],
            _number(row["baseline_value"]),
            "-" if math.isnan(row["ratio"]) else f"{row['ratio']:.2f}x",
            row["target"],
            "yes" if row["ok"] else "NO",
        )
        for row in rows
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(COLUMNS, *lines, strict=False)]
    aligned_right = {2, 4, 5}
    out = []
    for cells in [COLUMNS, tuple("-" * w for w in widths), *lines]:
        out.append("  ".join(
            str(cell).rjust(w) if i in aligned_right else str(cell).ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip())
    return "\n".join(out)


def _json_safe(row: dict[str, Any]) -> dict[str, Any]:
    """NaN (no baseline, no value) becomes null: JSON has no NaN."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run meshbox's benchmarks (bench/bench_*.py) and print a table.")
    parser.add_argument("--only", metavar="NAME", help="run one benchmark, e.g. 'proxy' for bench_proxy.py")
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the rows to FILE as JSON")
    parser.add_argument("--bench-dir", metavar="DIR", type=Path, default=BENCH_DIR,
                        help="where to look for bench_*.py (default: this script's folder)")
    args = parser.parse_args(argv)
    bench_dir = args.bench_dir.resolve()
    if not bench_dir.is_dir():
        parser.error(f"--bench-dir {bench_dir}: not a directory")
    try:
        modules = discover(bench_dir, args.only)
    except LookupError as exc:
        parser.error(str(exc))
    if not modules:
        print(f"run.py: no bench_*.py in {bench_dir}", file=sys.stderr)
        return 1
    # Bench modules import their helper modules (wrk_output, proc_sampler, ...) from their folder.
    for folder in {str(bench_dir), str(BENCH_DIR)}:
        if folder not in sys.path:
            sys.path.insert(0, folder)
    all_rows: list[dict[str, Any]] = []
    crashed = []
    for path in modules:
        started = time.monotonic()
        print(f"run.py: {path.name} ...", file=sys.stderr, flush=True)
        rows, ok = run_module(path)
        print(f"run.py: {path.name} took {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
        all_rows.extend(rows)
        if not ok:
            crashed.append(path.name)
    print(format_table(all_rows))
    if args.json:
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps([_json_safe(r) for r in all_rows], indent=2) + "\n")
        tmp.replace(args.json)
    missed = sum(1 for row in all_rows if not row["ok"])
    print(f"\n{len(all_rows)} rows, {missed} not ok; crashed: {', '.join(crashed) or 'none'}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
