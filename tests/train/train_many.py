"""Train (or resume) nano runs of several methods one after another in ONE process, as the tests' shared
runs: `python train_many.py OUT METHODS SETS [--resume]`, or under torchrun, where this script starts the
one process group every run uses (train() leaves a caller's group alone: re-creating a gloo group per run in
one job races on the rendezvous store's old keys). One interpreter start-up for many runs instead of one
per run (the start-up of torch and transformers is most of a nano run's time); the maths is the CLI's
(`lowrank-lens train` builds the same config from the same overrides)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import torch.distributed as dist

from lowrank_lens.presets import build_config
from lowrank_lens.train import train


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the CLI's progress lines, on stderr
    out, methods, sets = Path(argv[0]), argv[1].split(","), json.loads(argv[2])
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    try:
        for method in methods:
            train(build_config("nano", method, sets), out, resume="--resume" in argv)
    finally:
        if distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
