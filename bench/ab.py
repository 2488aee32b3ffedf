"""Run a benchmark on two versions of pipestate in interleaved rounds and compare medians.

    python bench/ab.py --base 5d8b8a3 --rounds 5 -- python bench/populate.py --windows 200000
    python bench/ab.py --base main~3 -- python bench/claims.py --db sqlite --procs 4

The base version is checked out once into a temporary git worktree; each round runs the
command first on one version and then on the other (the order alternates), with
PYTHONPATH pointing at that version's `src/`, so that both sides see the same drift of a
loaded machine. Every number the command prints is a figure, keyed by its line with the
numbers taken out (`sqlite first populate: 8.1 s` -> `sqlite first populate: # s`, the
first number); the table lists each figure's median per side and new/base.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")


def figures(text: str) -> dict[str, float]:
    """Every line's numbers, keyed by the line with them replaced by `#` (and its n-th number)."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        numbers = NUMBER.findall(line)
        if not numbers:
            continue
        key = NUMBER.sub("#", line).strip()
        for index, number in enumerate(numbers):
            found[f"{key} [{index}]" if len(numbers) > 1 else key] = float(number.replace(",", ""))
    return found


def run(command: list[str], src: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(command, cwd=src.parent, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"bench/ab.py: {' '.join(command)} failed in {src.parent}:\n{done.stderr[-2000:]}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--new", default=None, help="git revision of the new side (default: this work tree)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the bench command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the bench command after --")
    # Not under /tmp: test suites clean their temporary folders there.
    with tempfile.TemporaryDirectory(prefix="pipestate-ab-", dir=ROOT.parent) as tmp:
        trees = {"base": args.base, "new": args.new}
        sides = {"new": ROOT / "src"}
        for side, revision in trees.items():
            if revision is not None:
                tree = Path(tmp) / side
                git = ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), revision]
                subprocess.run(git, check=True)
                sides[side] = tree / "src"
        try:
            seen: dict[str, dict[str, list[float]]] = {"base": defaultdict(list), "new": defaultdict(list)}
            for round_ in range(args.rounds):
                order = ["base", "new"] if round_ % 2 == 0 else ["new", "base"]
                for side in order:
                    for key, value in figures(run(command, sides[side])).items():
                        seen[side][key].append(value)
                print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        finally:
            for side, revision in trees.items():
                if revision is not None:
                    remove = ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(Path(tmp) / side)]
                    subprocess.run(remove, check=False)
    print(f"{'figure':<70} {'base':>12} {'new':>12} {'new/base':>9}")
    for key in seen["new"]:
        if key not in seen["base"]:
            continue
        old, new = statistics.median(seen["base"][key]), statistics.median(seen["new"][key])
        ratio = f"{new / old:.3f}" if old else "-"
        print(f"{key[:70]:<70} {old:>12.4g} {new:>12.4g} {ratio:>9}")
    print(f"medians of {args.rounds} interleaved rounds; base {args.base}; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
