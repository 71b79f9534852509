"""Data loader of the lens_mc task: the JSONL beside this file, as a one-split DatasetDict.

lm-evaluation-harness calls it through `custom_dataset: !function utils.load_lens_mc` (lens_mc.yaml), so
the task finds its data wherever the package is installed, with no absolute path in the YAML.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets

DATA = Path(__file__).with_name("lens_mc.jsonl")


def load_lens_mc(**_: Any):
    """{'test': Dataset} of the 52 questions; extra keyword arguments (task metadata) are ignored."""
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
