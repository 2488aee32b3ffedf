"""Records per second end to end on the local default: files -> local stage -> DuckDB/SQLite.

    python bench/run.py                       # 3 days x 2,000 events/hour, DuckDB target, 1 worker
    python bench/run.py --target sqlite --workers 2 --events-per-hour 5000

Prints the figures; asserts nothing. Each run builds a fresh directory under
--dir (default: a temporary one) with the demo's generator and config.
"""

from __future__ import annotations

import argparse
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

from pipestate.demo import verify_demo, write_demo
from pipestate.manager import PipelineStateManager
from pipestate.runner import run_pipeline


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--events-per-hour", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--target", choices=["duckdb", "sqlite"], default="duckdb")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    if args.target == "duckdb" and args.workers > 1:
        parser.error("DuckDB allows one writing process: use --target sqlite with --workers > 1")

    directory = args.dir or Path(tempfile.mkdtemp(prefix="pipestate-bench-run-"))
    began = time.perf_counter()
    setup = write_demo(directory, days=args.days, events_per_hour=args.events_per_hour)
    generated = time.perf_counter() - began
    if args.target == "sqlite":
        text = setup.config_path.read_text(encoding="utf-8")
        text = re.sub(
            r'url = "duckdb:///[^"]+"', f'url = "sqlite:///{directory.resolve() / "target.db"}"', text
        )
        setup.config_path.write_text(text, encoding="utf-8")

    with PipelineStateManager(setup.config_path) as manager:
        result = run_pipeline(manager, workers=args.workers)
        target_url = str(manager.config.target["url"])
    rows, distinct = verify_demo(target_url)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    batches = result.summary.completed
    print(f"pipestate run: files -> local stage -> {args.target}, {args.workers} worker(s)")
    print(f"  events generated   {setup.events:>10,}   ({generated:.1f} s to write)")
    print(f"  batches completed  {batches:>10,}   ({args.days} days of 1h windows)")
    verdict = "exactly once" if rows == distinct == setup.events else "MISMATCH"
    print(f"  target rows        {rows:>10,}   distinct {distinct:,}: {verdict}")
    print(f"  wall time          {result.seconds:>10.1f} s (populate + run)")
    print(f"  throughput         {setup.events / result.seconds:>10,.0f} records/s")
    print(f"  per batch          {1000 * result.seconds / max(batches, 1):>10.0f} ms")
    print(f"  peak RSS (parent)  {peak_mb:>10.0f} MB")
    print(f"  directory          {directory}")
    return 0 if rows == distinct == setup.events else 1


if __name__ == "__main__":
    sys.exit(main())
