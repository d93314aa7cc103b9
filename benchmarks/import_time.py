"""How long `import surge`, `from surge import Accelerator` and `surge --help` take,
compared with `import torch` in the same run (fresh interpreters, median of N runs).

    python benchmarks/import_time.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

CASES = {
    "python -c pass": "pass",
    "import torch": "import torch",
    "import surge": "import surge",
    "from surge import Accelerator": "from surge import Accelerator",
    "surge --help": "import sys; sys.argv=['surge','--help']; from surge.commands.main import main; main()",
}


def self_time_of(statement: str) -> float:
    """Microseconds `python -X importtime` attributes to surge's own modules."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", statement], capture_output=True, text=True,
                         check=True).stderr
    total = 0
    for line in out.splitlines():
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[2].lstrip().startswith("surge"):
            total += int(parts[0])
    return total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="0")
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.runs):
        for name, stmt in CASES.items():  # alternate the cases within each round
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", stmt], check=True, capture_output=True, env=env)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["python -c pass"])
    torch_t = statistics.median(times["import torch"]) - base
    print("| command | median wall (s) | minus bare python (s) |")
    print("| --- | --- | --- |")
    for name, ts in times.items():
        print(f"| `{name}` | {statistics.median(ts):.3f} | {statistics.median(ts) - base:.3f} |")
    acc = statistics.median(times["from surge import Accelerator"]) - base
    print(f"\n`from surge import Accelerator` costs {acc - torch_t:+.3f} s over `import torch` "
          f"({acc / torch_t:.2f}x); surge's own modules self-time (-X importtime): "
          f"{self_time_of('from surge import Accelerator'):.3f} s")


if __name__ == "__main__":
    main()
