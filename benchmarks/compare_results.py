"""Do two benchmark runs give the same results? (issue #11 item 4: reproducible numbers)

Compares two ``results.json`` files (or the run folders holding them) field by field, timings
and each run's own folder aside (``metricattack.benchmark.compare``), prints every difference
and the thread counts both runs recorded, and exits 1 if there is any difference.

Run:  python benchmarks/compare_results.py runs/demo-A runs/demo-B
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from metricattack.benchmark.compare import TIMING_FIELDS, compare_result_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path, help="results.json or the run folder holding it")
    parser.add_argument("second", type=Path, help="results.json or the run folder holding it")
    args = parser.parse_args(argv)
    for run in (args.first, args.second):
        path = run / "results.json" if run.is_dir() else run
        provenance = json.loads(path.read_text(encoding="utf-8"))["provenance"]
        print(f"{path}: threads {provenance.get('threads')}, wall {provenance['wall_seconds']} s, created {provenance['created']}")
    differences = compare_result_files(args.first, args.second)
    for line in differences:
        print(line)
    ignored = ", ".join(TIMING_FIELDS)
    print(f"{len(differences)} difference(s) (ignored: {ignored}; paths compared relative to each run's folder)")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
