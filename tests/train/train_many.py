"""Train (or resume) nano runs of several methods one after another in ONE process, as the tests' shared
runs: `python train_many.py OUT METHODS SETS [--resume]` (or `--plan JSON`), or under torchrun, where this
script starts the one process group every run uses (train() leaves a caller's group alone: re-creating a
gloo group per run in one job races on the rendezvous store's old keys). One interpreter start-up for many
runs instead of one per run (the start-up of torch and transformers is most of a nano run's time); the
maths is the CLI's (`lowrank-lens train` builds the same config from the same overrides)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import torch.distributed as dist

from lowrank_lens.presets import build_config
from lowrank_lens.train import train


def plan(argv: list[str]) -> list[tuple[Path, str, list[str]]]:
    """(out, method, sets) of each run: OUT METHODS SETS (every method with the same sets), or --plan JSON, a
    list of [out, method, sets] (runs of different settings in one process group)."""
    if argv[0] == "--plan":
        return [(Path(o), m, s) for o, m, s in json.loads(argv[1])]
    return [(Path(argv[0]), method, json.loads(argv[2])) for method in argv[1].split(",")]


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the CLI's progress lines, on stderr
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    try:
        for out, method, sets in plan(argv):
            train(build_config("nano", method, sets), out, resume="--resume" in argv)
    finally:
        if distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
