"""Wall time of `lowrank-lens demo` from nothing: a fresh data cache (so the tokenizer is trained and the
corpus tokenized, as on a new machine) and a fresh study folder. The budget is 15 minutes on a 2-core CPU.

    python benchmarks/bench_demo.py            # prints the total and the time of each stage
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    env = {**os.environ, "LOWRANK_LENS_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lowrank_lens", "demo", "--out", str(work / "demo")], env=env)
    total = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"demo failed with status {proc.returncode}")
    stages = json.loads((work / "demo" / "timings.json").read_text())
    print(f"\ndemo: {total / 60:.1f} min in all ({platform.machine()}, {os.cpu_count()} CPUs, load before {load:.1f}, "
          f"after {os.getloadavg()[0]:.1f})")
    for k, v in stages.items():
        print(f"  {k:12s} {v:7.1f} s")
    print(f"report: {work / 'demo' / 'report' / 'index.html'}")


if __name__ == "__main__":
    main()
