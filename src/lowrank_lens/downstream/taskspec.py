"""Which lm-evaluation-harness tasks to run, how to find them offline, and what identifies them in the cache.

A task argument is one of:
  - a preset: "study" (the paper's inferred set, docs/study.md §1.6) or "commonsense" (the LLaMA zero-shot suite,
    docs/ecosystem.md §5);
  - "lens_mc", the project's own Python smoke test (tasks/lens_mc/; not a benchmark);
  - a JSONL file of {"question", "choices", "label"} rows, turned into a multiple-choice task by a dict config
    (prompt "Question: {question}\\nAnswer:", choices scored after a space, acc and acc_norm);
  - a task YAML file, or the name of any task, group or tag known to lm-eval or found in `include_path`.

lm-eval's TaskManager parses ~14k YAML files when it indexes its built-in tasks (10-20 s), so task managers
are cached per process, and local tasks (lens_mc, JSONL, include paths) are looked up first in an index
without the built-ins, which takes milliseconds. Hub datasets are unreachable offline: when HF_HUB_OFFLINE /
HF_DATASETS_OFFLINE is set or the hub does not answer within seconds, tasks load in offline mode, so a hub
task fails at once (instead of after ~25 s of retries) with a one-line LensError giving the local recipe.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import datasets
from huggingface_hub import constants

from ..errors import LensError

PRESETS: dict[str, list[str]] = {
    # docs/study.md §1.6: PIQA, COPA, MRPC, RTE, MNLI, ARC-Easy, BLiMP, SST-2 (lm-eval 0.4.13 names; rte and mrpc,
    # mnli, sst2 are the GLUE versions, copa the SuperGLUE one, blimp the group averaging its 67 subtasks).
    "study": ["piqa", "copa", "mrpc", "rte", "mnli", "arc_easy", "blimp", "sst2"],
    # docs/ecosystem.md §5: the LLaMA commonsense zero-shot suite.
    "commonsense": ["arc_easy", "arc_challenge", "boolq", "hellaswag", "openbookqa", "piqa", "social_iqa",
                    "winogrande"],
}
TASKS_DIR = Path(__file__).with_name("tasks")
"""The project's own lm-eval task folder (include path): lens_mc."""
JSONL_TEMPLATE_VERSION = 1
HUB_PROBE_TIMEOUT_S = 3.0
OFFLINE_RECIPE = ("copy its rows to a local JSONL and pass a task YAML with `dataset_path: json` and "
                  "`dataset_kwargs: {data_files: {test: /abs/rows.jsonl}}` (same doc_to_text/doc_to_choice/"
                  "doc_to_target as the original) through --include-path, or pass a JSONL of "
                  "{question, choices, label} rows as the task")


@dataclass
class TaskSpec:
    """One requested task: what lm-eval is given (`spec`) and what identifies it for the cache (`key`)."""

    name: str
    spec: str | dict[str, Any]
    kind: str
    """lens_mc | jsonl | yaml | name"""
    key: dict[str, Any] = field(default_factory=dict)


def _files_digest(paths: Sequence[Path]) -> str:
    """sha256 over the relative names and bytes of every file under `paths` (files or folders)."""
    h = hashlib.sha256()
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()
                                                      and "__pycache__" not in p.parts)
        for p in files:
            h.update(p.relative_to(root.parent if root.is_file() else root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:24]


def require_lm_eval() -> Any:
    """The lm_eval module, or a one-line LensError saying how to install it."""

    try:
        import lm_eval

        if importlib.util.find_spec("accelerate") is None:  # lm-eval's HFLM needs it (the [hf] extra)
            raise ImportError("No module named 'accelerate'")
    except ImportError as e:
        raise LensError(f"downstream evaluation needs lm-evaluation-harness ({e}); install it with "
                        f"pip install 'lowrank-lens[eval]' (or pip install 'lm-eval[hf]==0.4.13')") from None
    return lm_eval


def include_paths(include_path: str | Path | Sequence[str | Path] | None) -> list[Path]:
    """The user's include paths (a path, several separated by os.pathsep or commas, or a list), checked."""
    if include_path is None:
        return []
    items = ([include_path] if isinstance(include_path, (str, Path)) else list(include_path))
    parts = [q for p in items for q in str(p).replace(",", os.pathsep).split(os.pathsep) if q.strip()]
    out = []
    for p in parts:
        path = Path(p).expanduser().resolve()
        if not path.exists():
            raise LensError(f"--include-path {p}: no such folder")
        out.append(path)
    return out


def jsonl_task(path: Path) -> dict[str, Any]:
    """The lm-eval dict config of a {"question","choices","label"} JSONL (rows are checked first)."""
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ok = (isinstance(row.get("question"), str) and isinstance(row.get("choices"), list)
                  and len(row["choices"]) >= 2 and isinstance(row.get("label"), int)
                  and 0 <= row["label"] < len(row["choices"]))
        except (json.JSONDecodeError, AttributeError):
            ok = False
        if not ok:
            raise LensError(f"{path}:{i}: each line must be a JSON object with \"question\" (text), \"choices\" "
                            f"(a list of at least 2 texts) and \"label\" (index of the right choice)")
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in path.stem)
    return {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(path)}},
            "output_type": "multiple_choice", "test_split": "test",
            "doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_choice": "{{choices}}",
            "doc_to_target": "label",
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                            for m in ("acc", "acc_norm")],
            "metadata": {"version": 1.0}}


def resolve_tasks(tasks: Sequence[str], include_path: str | Path | Sequence[str | Path] | None = None,
                  ) -> list[TaskSpec]:
    """Expand presets and classify each task argument; no lm-eval index is needed for this."""
    lm_eval = require_lm_eval()

    inc = include_paths(include_path)
    inc_digest = _files_digest(inc) if inc else ""
    names: list[str] = []
    for t in tasks:
        for n in PRESETS.get(t, [t]):
            if n not in names:
                names.append(n)
    if not names:
        raise LensError(f"no tasks given; name lm-eval tasks, a preset ({', '.join(PRESETS)}), lens_mc or a JSONL")
    out = []
    for n in names:
        p = Path(n).expanduser()
        if n.endswith(".jsonl"):
            if not p.is_file():
                raise LensError(f"task file {n} does not exist")
            d = jsonl_task(p.resolve())
            out.append(TaskSpec(d["task"], d, "jsonl", {"jsonl": _files_digest([p]), "v": JSONL_TEMPLATE_VERSION}))
        elif n.endswith((".yaml", ".yml")):
            if not p.is_file():
                raise LensError(f"task file {n} does not exist")
            out.append(TaskSpec(p.stem, str(p.resolve()), "yaml", {"yaml_dir": _files_digest([p.resolve().parent]),
                                                                    "file": p.name}))
        elif n == "lens_mc":
            out.append(TaskSpec(n, n, "lens_mc", {"lens_mc": _files_digest([TASKS_DIR / "lens_mc"])}))
        else:
            out.append(TaskSpec(n, n, "name", {"name": n, "lm_eval": lm_eval.__version__, "include": inc_digest,
                                               "own": _files_digest([TASKS_DIR])}))
    return out


@functools.lru_cache(maxsize=8)
def _task_manager(paths: tuple[str, ...], defaults: bool):
    from lm_eval.tasks import TaskManager

    quiet_lm_eval()
    return TaskManager(include_path=list(paths), include_defaults=defaults)


def task_manager(specs: Sequence[TaskSpec], include_path: Any = None):
    """A (process-cached) TaskManager that knows every named spec; LensError naming unknown tasks.

    The index without lm-eval's built-in tasks is tried first (milliseconds); the full one only when a name
    is not local.
    """
    paths = tuple(str(p) for p in [TASKS_DIR, *include_paths(include_path)])
    wanted = [s.name for s in specs if s.kind in ("name", "lens_mc")]
    tm = _task_manager(paths, False)
    if all(n in tm.all_tasks for n in wanted):
        return tm
    tm = _task_manager(paths, True)
    unknown = [n for n in wanted if n not in tm.all_tasks]
    if unknown:
        hints = {n: difflib.get_close_matches(n, tm.all_tasks, n=3) for n in unknown}
        said = "; ".join(f"{n!r}" + (f" (did you mean {', '.join(h)}?)" if h else "") for n, h in hints.items())
        raise LensError(f"unknown lm-eval task {said}; use an lm-eval task/group name, a preset "
                        f"({', '.join(PRESETS)}), lens_mc, a JSONL of {{question, choices, label}} rows, or a "
                        f"YAML in --include-path")
    return tm


class _DropHarmless:
    """Logging filter for lm-eval's known-harmless warnings about how it is called from here."""

    HARMLESS = ("model kwarg is not of type `str`", "already-initialized model", "Custom kwargs can be passed")

    def filter(self, record: Any) -> bool:
        return not any(h in record.getMessage() for h in self.HARMLESS)


def quiet_lm_eval() -> None:
    """lm-eval logs at WARNING and above only, minus the harmless warnings that an in-memory model (HFLM with
    `pretrained=model`) and lens_mc's data loader (custom_dataset) always trigger."""

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    for name in ("lm_eval.models.huggingface", "lm_eval.api.task", "lm_eval.api.model", "lm_eval.evaluator"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _DropHarmless) for f in lg.filters):
            lg.addFilter(_DropHarmless())


_hub_lock = threading.Lock()
_hub_state: dict[str, bool] = {}


def hub_reachable() -> bool:
    """False when HF offline mode is set or the hub's host does not answer within a few seconds (cached)."""
    if any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
           for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return False
    with _hub_lock:
        if "ok" not in _hub_state:

            host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
            result: list[bool] = []

            def probe() -> None:
                try:
                    socket.create_connection((host, 443), timeout=HUB_PROBE_TIMEOUT_S).close()
                    result.append(True)
                except OSError:
                    result.append(False)

            t = threading.Thread(target=probe, daemon=True)
            t.start()
            t.join(HUB_PROBE_TIMEOUT_S + 0.5)  # the DNS lookup has no timeout of its own
            _hub_state["ok"] = bool(result and result[0])
        return _hub_state["ok"]


@contextlib.contextmanager
def hub_guard() -> Iterator[None]:
    """Offline mode for datasets/huggingface_hub while tasks load, when the hub is unreachable."""
    if hub_reachable():
        yield
        return

    before = (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = before


def load_task(tm: Any, spec: TaskSpec) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(lm-eval's loaded task dict, table units) for one spec; one-line LensError on failure.

    Units are what a table row reports: a task gives itself; a group that aggregates acc gives one unit over
    its leaf tasks (weighted as lm-eval weights it); a tag or a group without aggregation gives its leaves.
    """
    try:
        with hub_guard():
            loaded = tm.load([spec.spec])
    except LensError:
        raise
    except Exception as e:  # noqa: BLE001 - lm-eval and datasets raise many kinds; all become one line
        msg = " ".join(str(e).split())[:300]
        if isinstance(e, ConnectionError) or "Couldn't reach" in msg or "offline" in msg.lower():
            raise LensError(f"task {spec.name!r} needs a dataset from the Hugging Face hub, which is unreachable "
                            f"({msg}); {OFFLINE_RECIPE}") from None
        raise LensError(f"task {spec.name!r} could not be loaded by lm-eval ({type(e).__name__}: {msg})") from None
    groups, tasks = loaded.get("groups", {}), loaded["tasks"]
    children = {c for g in groups.values() for c in g.child_names}
    top = [g for name, g in groups.items() if name not in children]
    if len(top) == 1 and {t.task_name for t in top[0].get_all_tasks()} == set(tasks):
        group = top[0]
        leaves = [t.task_name for t in group.get_all_tasks()]
        aggs = {a.metric: a for a in (group.aggregate_metric_list or [])}
        if "acc" in aggs:
            weighting = "size" if aggs["acc"].weight_by_size else "equal"
            return loaded, [{"name": group.name, "leaves": leaves, "weighting": weighting}]
        return loaded, [{"name": n, "leaves": [n], "weighting": "single"} for n in leaves]
    if len(tasks) == 1 and not groups:
        task = next(iter(tasks.values()))
        return loaded, [{"name": task.task_name, "leaves": [task.task_name], "weighting": "single"}]
    return loaded, [{"name": n, "leaves": [n], "weighting": "single"} for n in tasks]
