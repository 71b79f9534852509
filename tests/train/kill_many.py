"""Kill nano runs of several methods for real, cheaply: `python kill_many.py OUT METHODS SETS AFTER AT_ONCE`.

Each run is a child forked from this one interpreter (torch and transformers are imported once, here, not
once per run) and trains as train_many.py does; as soon as its run folder holds a complete checkpoint at a
step >= AFTER, the child gets SIGKILL: no cleanup, no exception handler, exactly a killed process. AT_ONCE
children run side by side. Prints one JSON line {method: [steps of the checkpoints left]}; exits 1 with the
reason if a run ended before it was killed or never reached AFTER."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from lowrank_lens.presets import build_config
from lowrank_lens.runfolder.checkpoint import complete_checkpoints
from lowrank_lens.train import train

TIMEOUT_S = 300


def _child(method: str, out: Path, sets: list[str]) -> None:
    code = 1
    try:
        train(build_config("nano", method, sets), out)
        code = 0
    finally:
        os._exit(code)  # never back into the parent's loop


def _kill_group(methods: list[str], out: Path, sets: list[str], after: int) -> dict[str, list[int]]:
    pids = {}
    for method in methods:
        pid = os.fork()
        if pid == 0:
            _child(method, out, sets)
        pids[method] = pid
    left: dict[str, list[int]] = {}
    deadline = time.time() + TIMEOUT_S
    try:
        while pids and time.time() < deadline:
            for method, pid in list(pids.items()):
                run_dir = out / f"nano-{method}-seed0"
                if any(step >= after for step, _ in complete_checkpoints(run_dir)):
                    ended, status = os.waitpid(pid, os.WNOHANG)
                    if ended:
                        del pids[method]
                        sys.exit(f"{method}: the run ended (status {status}) before it could be killed")
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    left[method] = [s for s, _ in complete_checkpoints(run_dir)]
                    del pids[method]
                elif os.waitpid(pid, os.WNOHANG)[0]:
                    del pids[method]
                    sys.exit(f"{method}: the run ended before its step-{after} checkpoint")
            time.sleep(0.02)
        if pids:
            sys.exit(f"{sorted(pids)} did not reach step {after} in {TIMEOUT_S} s")
    finally:  # on any failure, no child is left training
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return left


def main(argv: list[str]) -> None:
    out, methods, sets = Path(argv[0]), argv[1].split(","), json.loads(argv[2])
    after, at_once = int(argv[3]), int(argv[4])
    left: dict[str, list[int]] = {}
    for start in range(0, len(methods), at_once):
        left |= _kill_group(methods[start:start + at_once], out, sets, after)
    print(json.dumps(left))


if __name__ == "__main__":
    main(sys.argv[1:])
