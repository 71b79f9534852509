"""Plugins from other distributions (docs/plugins.md): real packages, built from source in tmp_path and installed
with pip (offline) into target folders, that declare a method and a metric in the entry-point groups
`lowrank_lens.methods` and `lowrank_lens.metrics`. Subprocesses with those folders on PYTHONPATH see the plugins
in `lowrank-lens list` and train and analyse with them in a nano study that ends in a report; a plugin that fails
to import is one warning line and the rest works; LOWRANK_LENS_NO_PLUGINS=1 turns them off; a plugin that
takes a name already registered is one error naming both sources."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from lens_testutil import PYTHON, cli_env

from lowrank_lens.registry import NO_PLUGINS_ENV, Registry

METHOD = "ext-adamw"
METRIC = "ext_param_norm"

EXT_METHOD = f'''
from lowrank_lens.methods import register
from lowrank_lens.methods.base import Method, MethodPreset


@register
class ExtAdamW(Method):
    name = "{METHOD}"
    description = "Full-rank AdamW published by another distribution through an entry point"
    colour = "#0a0b0c"
    memory_formula = "as full-rank"

    @classmethod
    def preset(cls, scale):
        return MethodPreset(notes=[f"{METHOD} {{scale}}: the shared recipe"])
'''

EXT_METRIC = f'''
import math

import torch

from lowrank_lens.analysis.base import Metric, Result
from lowrank_lens.analysis.metrics import register
from lowrank_lens.analysis.plotting import line_plot_by_method


@register
class ParamNorm(Metric):
    name = "{METRIC}"
    dimension = "spectra"
    subject_kind = "checkpoint"
    headline = "param_norm"
    needs_tokens = False
    definition = "The Frobenius norm of all trained parameters at the checkpoint (an outside plugin's metric)."

    def compute(self, subject, ctx):
        (ckpt,) = subject.checkpoints
        model = ctx.load(ckpt, dtype=torch.float32).model
        norm = math.sqrt(sum(float(p.detach().pow(2).sum()) for p in model.parameters()))
        return Result(self.name, subject.describe(), scalars={{"param_norm": norm}})

    def plot(self, results, out_dir):
        return [line_plot_by_method(results, "param_norm", out_dir / "{METRIC}.png", "parameter norm")]
'''


def write_package(root: Path, dist: str, module: str, files: dict[str, str], groups: dict[str, dict[str, str]]) -> Path:
    """A source tree of distribution `dist` with package `module` and entry points {group: {name: value}}."""
    src = root / dist
    (src / module).mkdir(parents=True)
    (src / module / "__init__.py").write_text("")
    for name, text in files.items():
        (src / module / name).write_text(textwrap.dedent(text))
    eps = "".join(f'\n[project.entry-points."{group}"]\n' + "".join(f'"{k}" = "{v}"\n' for k, v in entries.items())
                  for group, entries in groups.items())
    (src / "pyproject.toml").write_text(
        f'[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "{dist}"\nversion = "0.1"\n{eps}\n[tool.setuptools]\npackages = ["{module}"]\n')
    return src


def pip_install(target: Path, *sources: Path) -> None:
    """Offline: no index, no build isolation (setuptools from this environment), no dependencies."""
    res = subprocess.run([PYTHON, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--no-index", "--disable-pip-version-check", "--target", str(target),
                          *map(str, sources)], capture_output=True, text=True, cwd=target.parent)
    assert res.returncode == 0, res.stderr


@pytest.fixture(scope="module")
def plugin_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`ok`: lens-ext (a method and a metric) beside lens-broken (a method whose import fails);
    `dup`: lens-dup, a method that takes the name full-rank."""
    root = tmp_path_factory.mktemp("plugins")
    ext = write_package(root, "lens-ext", "lens_ext", {"method.py": EXT_METHOD, "metric.py": EXT_METRIC},
                        {"lowrank_lens.methods": {METHOD: "lens_ext.method"},
                         "lowrank_lens.metrics": {METRIC: "lens_ext.metric"}})
    broken = write_package(root, "lens-broken", "lens_broken",
                           {"method.py": "import lens_frobnicator  # not installed\n"},
                           {"lowrank_lens.methods": {"broken-method": "lens_broken.method"}})
    dup = write_package(root, "lens-dup", "lens_dup",
                        {"method.py": EXT_METHOD.replace(f'name = "{METHOD}"', 'name = "full-rank"')},
                        {"lowrank_lens.methods": {"dup": "lens_dup.method"}})
    dirs = {"ok": root / "site-ok", "dup": root / "site-dup"}
    pip_install(dirs["ok"], ext, broken)
    pip_install(dirs["dup"], dup)
    return dirs


def lens(args: list[str], sites: list[Path], cwd: Path, no_plugins: bool = False) -> subprocess.CompletedProcess:
    """`python -m lowrank_lens ARGS` with the plugins installed in `sites` importable."""
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join([*map(str, sites), env["PYTHONPATH"]])
    env.pop("LOWRANK_LENS_NO_PLUGINS", None)
    if no_plugins:
        env["LOWRANK_LENS_NO_PLUGINS"] = "1"
    return subprocess.run([PYTHON, "-m", "lowrank_lens", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "failed to import" in line]


def test_outside_plugins_are_listed_and_a_broken_one_is_one_warning(plugin_dirs, tmp_path):
    res = lens(["list"], [plugin_dirs["ok"]], tmp_path)
    assert res.returncode == 0, res.stderr
    listed = {line.split()[0] for line in res.stdout.splitlines() if line.startswith("  ")}
    assert {METHOD, METRIC, "full-rank", "spectra"} <= listed and "broken-method" not in listed
    (line,) = warning_lines(res.stderr)
    for part in ("'broken-method'", "lens_broken.method", "'lens-broken' 0.1", "ModuleNotFoundError",
                 "lens_frobnicator", "LOWRANK_LENS_NO_PLUGINS=1"):
        assert part in line, line
    assert "Traceback" not in res.stderr


def test_a_plugin_that_takes_a_registered_name_is_one_error_naming_both(plugin_dirs, tmp_path):
    res = lens(["list"], [plugin_dirs["dup"]], tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    for part in ("method 'full-rank' is registered twice", "lowrank_lens.methods.full_rank.FullRank",
                 "lens_dup.method.ExtAdamW", "entry point 'dup'", "'lens-dup' 0.1"):
        assert part in line, line

    # LOWRANK_LENS_NO_PLUGINS=1: no outside plugin is loaded, so neither the clash nor the broken import
    off = lens(["list"], [plugin_dirs["dup"], plugin_dirs["ok"]], tmp_path, no_plugins=True)
    assert off.returncode == 0, off.stderr
    listed_off = {line.split()[0] for line in off.stdout.splitlines() if line.startswith("  ")}
    assert METHOD not in listed_off and METRIC not in listed_off and {"full-rank", "spectra"} <= listed_off
    assert warning_lines(off.stderr) == [] and "error" not in off.stderr


def test_a_nano_study_trains_and_analyses_with_outside_plugins_to_a_report(plugin_dirs, tmp_path):
    study = {"name": "ext", "methods": [METHOD], "scales": ["nano"], "seeds": [0],
             "overrides": ["train.steps=4", "train.checkpoints=1", "train.eval_every=0", "train.log_every=2"],
             "metrics": [METRIC], "downstream_tasks": [], "sequences": 8, "eval_batch_size": 8}
    (tmp_path / "ext.json").write_text(json.dumps(study))
    res = lens(["study", "ext.json", "--out", "out"], [plugin_dirs["ok"]], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "out"
    run = out / "runs" / f"nano-{METHOD}-seed0"
    assert json.loads((run / "config.json").read_text())["method"] == METHOD
    assert (run / "ckpt" / "step_000004" / "model.safetensors").is_file()
    table = (out / "analysis" / f"{METRIC}.csv").read_text().splitlines()
    header, rows = table[0].split(","), [r.split(",") for r in table[1:]]
    assert "param_norm" in header and len(rows) == 2  # steps 0 and 4
    norms = [float(r[header.index("param_norm")]) for r in rows]
    assert all(n > 0 for n in norms) and norms[0] != norms[1]  # the weights moved
    html = (out / "report" / "index.html").read_text()
    assert METRIC in html and METHOD in html and "#0a0b0c" in html  # the plugin's colour in the report
    assert (out / "report" / "figures" / METRIC / f"{METRIC}.png").is_file()


def test_a_plugin_failing_half_way_registers_nothing_and_one_registering_nothing_is_named(tmp_path, monkeypatch,
                                                                                           caplog):
    """In process, on a registry of its own: a distribution installed as its bare .dist-info (what pip writes)
    with three entry points. The one whose module fails after a `register` leaves nothing registered; the one
    whose module registers nothing is a warning too; the good one is found, with its source."""
    group = "lowrank_lens_test.things"
    files = {"lens_t_host": "REG = None\n",
             "lens_t_half": "import lens_t_host\nlens_t_host.REG.register('half')(object)\n"
                            "raise RuntimeError('boom\\nsecond line')\n",
             "lens_t_empty": "",
             "lens_t_good": "import lens_t_host\n\n\n@lens_t_host.REG.register('good')\nclass Good:\n    pass\n"}
    for name, text in files.items():
        (tmp_path / f"{name}.py").write_text(text)
    info = tmp_path / "lens_t-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lens-t\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\nhalf = lens_t_half\nempty = lens_t_empty\ngood = lens_t_good\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(NO_PLUGINS_ENV, raising=False)
    import lens_t_host

    reg = lens_t_host.REG = Registry("thing", group=group)
    with caplog.at_level(logging.WARNING, logger="lowrank_lens"):
        assert reg.names() == ["good"] and "half" not in reg
    assert reg.source("good") == "lens_t_good.Good from entry point 'good' (lens_t_good) of distribution 'lens-t' 0.1"
    half, empty = sorted((r.getMessage() for r in caplog.records), key=lambda m: "'empty'" in m)
    assert "'half'" in half and "RuntimeError: boom" in half and "second line" not in half
    assert "'empty'" in empty and "registered no thing" in empty

    monkeypatch.setenv(NO_PLUGINS_ENV, "1")
    lens_t_host.REG = off = Registry("thing", group=group)
    assert off.names() == []
    for name in files:  # the modules' names are this test's own; leave no trace for the tests after it
        sys.modules.pop(name, None)
