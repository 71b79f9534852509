"""The tune stage: each (scale, method)'s learning rate chosen the same way, before the study trains.

For every (scale, method) the stage trains short proxy runs, one per point of a grid of `optim.lr` (the
method preset's lr times each `tune_grid` multiplier: by default 5 points a factor 2 apart, centred on it),
at one selection seed (`tune_seed`, by default one the study's runs do not use, so the runs that report
results are not the runs the lr was picked on) and for `tune_fraction` of the run's steps (1: its own
length; the warmup is scaled alike, and the cosine ends at the proxy's last step). The chosen lr is the one
with the lowest final validation loss.

- A proxy that diverges (a non-finite loss, gradient, weight or validation) is a data point, "diverged",
  recorded in its folder (diverged.json) so a rerun does not train it again; it is never chosen.
- Ties (equal final losses, as floats) go to the lr closest to the preset's on the log scale, then to the
  smaller one. If every proxy of a (scale, method) diverged, the stage stops with one line.
- Past an edge (`tune_extend` > 0): while the best lr is the largest (smallest) tried, one more point a
  grid step further is trained, at most `tune_extend` of them per (scale, method), so a method whose optimum
  lies outside the grid is not held at its edge. A choice still at an edge is flagged in the table.

The grid's proxy runs are planned with the spec (study/spec.py `plan_proxies`, so a grid that leaves lr's
range fails when the study file is loaded); this module trains them, settles each (scale, method) and chooses.

Layout: <study>/tune/runs/<scale>-<method>-lr<lr>/ (ordinary run folders), <study>/tune/tune.csv (one row
per proxy, the chosen one marked) and <study>/tune/chosen.json. The train stage reads the choice
(`tuned_lrs`), adds `optim.lr=<chosen>` after the study's overrides and records it in each run's notes.
The choice is a function of the proxies' final checkpoints alone, so every process (a Slurm training task,
the inline runner, --status) computes the same one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..analysis.tables import write_csv
from ..atomic import write_json_atomic
from ..errors import LensError, TrainingDiverged
from ..runfolder.checkpoint import complete_checkpoints, read_meta
from ..runfolder.files import read_json_object
from ..train import train
from .spec import PlannedRun, ProxyRun, StudySpec, make_proxy, plan_proxies, proxy_bases
from .workers import run_in_workers

log = logging.getLogger("lowrank_lens")

TUNE_DIR = "tune"
DIVERGED = "diverged.json"
OK, DIVERGED_STATE, MISSING = "ok", "diverged", "not trained"


def tune_dir(study_dir: Path) -> Path:
    return Path(study_dir) / TUNE_DIR


def proxy_runs_dir(study_dir: Path) -> Path:
    return tune_dir(study_dir) / "runs"


def _step(grid: list[float]) -> float:
    """One grid step: the factor between the grid's two smallest points (2 for the default grid)."""
    g = sorted(grid)
    return g[1] / g[0] if len(g) > 1 else 2.0


@dataclass
class Group:
    """One (scale, method)'s proxies so far and what the stage still needs from it."""

    rows: list[dict[str, Any]]
    next: ProxyRun | None = None
    """The grid point past an edge to train next (tune_extend)."""
    pending: list[str] | None = None
    """Proxies of the grid not finished yet."""
    note: str = ""


def settle(spec: StudySpec, study_dir: Path, base: PlannedRun) -> Group:
    """Walk one (scale, method): the grid's rows; then, while the best lr lies at an end of what was tried and
    fewer than `tune_extend` points were added, the next point past that end (trained or still to train)."""
    runs_dir = proxy_runs_dir(study_dir)
    rows = [proxy_row(make_proxy(spec, base, m), runs_dir) for m in spec.tune_grid]
    pending = [r["run"] for r in rows if r["status"] == MISSING]
    if pending:
        return Group(rows, pending=pending)
    step, note = _step(spec.tune_grid), ""
    for _ in range(spec.tune_extend):
        best = choose(rows)
        tried = sorted(r["multiplier"] for r in rows)
        if best["multiplier"] not in (tried[0], tried[-1]) or len(tried) < 2:
            break
        m = tried[-1] * step if best["multiplier"] == tried[-1] else tried[0] / step
        try:
            proxy = make_proxy(spec, base, m)
        except LensError:  # the next lr would leave (0, 1]
            note = f"not extended past lr {best['lr']:g}: optim.lr must stay in (0, 1]"
            break
        row = proxy_row(proxy, runs_dir)
        if row["status"] == MISSING:
            return Group(rows, next=proxy)
        rows.append(row)
    return Group(rows, note=note)


def groups(spec: StudySpec, study_dir: Path) -> dict[tuple[str, str], Group]:
    return {key: settle(spec, study_dir, base) for key, base in proxy_bases(spec).items()} if spec.tune else {}


# ---- training the proxies --------------------------------------------------------------------------------
def proxy_state(proxy: ProxyRun, runs_dir: Path) -> str:
    run_dir = runs_dir / proxy.run.run_name
    if (run_dir / DIVERGED).is_file():
        return DIVERGED_STATE
    done = [s for s, p in complete_checkpoints(run_dir) if p.name != "resume"] if run_dir.is_dir() else []
    return OK if done and done[-1] >= proxy.run.cfg.train.steps else MISSING


def train_proxy(proxy: ProxyRun, runs_dir: Path) -> str:
    """Train (or resume) one proxy; a divergence is recorded, not raised. Returns its state."""
    state = proxy_state(proxy, runs_dir)
    if state != MISSING:
        return state
    try:
        train(proxy.run.cfg, runs_dir, run_name=proxy.run.run_name, resume=True)
    except TrainingDiverged as e:
        write_json_atomic(runs_dir / proxy.run.run_name / DIVERGED, {"step": e.step, "error": str(e)})
        log.info(f"tune: {proxy.run.run_name} diverged at step {e.step} (a data point, not an error)")
        return DIVERGED_STATE
    return OK


def tune_all(spec: StudySpec, out: Path) -> list[dict[str, Any]]:
    """The whole stage in this process (or `spec.jobs` workers): train the grid's missing proxies, then the
    points past an edge round by round (tune_extend), and write the table."""
    runs_dir = proxy_runs_dir(out)
    proxies = plan_proxies(spec)
    todo = [p for p in proxies if proxy_state(p, runs_dir) == MISSING]
    log.info(f"tune: {len(proxies) - len(todo)} of {len(proxies)} grid proxy runs already finished, {len(todo)} "
             f"to train")
    run_in_workers(_train_proxy_job, [(p, runs_dir) for p in todo], [p.run for p in todo], spec.jobs, "tune")
    for round_ in range(1, spec.tune_extend + 1):
        todo = [g.next for g in groups(spec, out).values() if g.next is not None]
        if not todo:
            break
        log.info(f"tune: {len(todo)} best lr(s) at an edge of the grid: one more point each (round {round_} of at "
                 f"most {spec.tune_extend})")
        run_in_workers(_train_proxy_job, [(p, runs_dir) for p in todo], [p.run for p in todo], spec.jobs, "tune")
    return write_tune_table(spec, out)


def extend_once(spec: StudySpec, study_dir: Path, scale: str, method: str) -> str:
    """One round past an edge for one (scale, method) (a submitted task): train its next point, if any."""
    group = settle(spec, study_dir, proxy_bases(spec)[(scale, method)])
    if group.next is None:
        return "settled"
    return train_proxy(group.next, proxy_runs_dir(study_dir))


def _train_proxy_job(proxy: ProxyRun, runs_dir: Path) -> str:
    return f"{proxy.run.run_name}: {train_proxy(proxy, runs_dir)}"


# ---- the choice ------------------------------------------------------------------------------------------
def proxy_row(proxy: ProxyRun, runs_dir: Path) -> dict[str, Any]:
    state = proxy_state(proxy, runs_dir)
    row: dict[str, Any] = {"scale": proxy.scale, "method": proxy.method, "lr": proxy.lr,
                           "multiplier": proxy.multiplier, "preset_lr": proxy.centre, "run": proxy.run.run_name,
                           "steps": proxy.run.cfg.train.steps, "seed": proxy.run.seed, "status": state,
                           "val_loss": None, "val_ppl": None, "diverged_at": None}
    run_dir = runs_dir / proxy.run.run_name
    if state == OK:
        final = [p for _, p in complete_checkpoints(run_dir) if p.name != "resume"][-1]
        val = read_meta(final).get("val") or {}
        row["val_loss"], row["val_ppl"] = val.get("val_loss"), val.get("val_ppl")
        if not (isinstance(row["val_loss"], (int, float)) and math.isfinite(row["val_loss"])):
            row["status"] = DIVERGED_STATE
    elif state == DIVERGED_STATE:
        row["diverged_at"] = read_json_object(run_dir / DIVERGED, str(run_dir / DIVERGED), "delete the folder and "
                                              "rerun the tune stage").get("step")
    return row


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The chosen row among one (scale, method)'s proxy rows (module docstring: lowest final validation
    loss; ties to the lr nearest the preset's, then the smaller), with why."""
    finite = [r for r in rows if r["status"] == OK]
    if not finite:
        r0 = rows[0]
        raise LensError(f"tune: every proxy of {r0['scale']} {r0['method']} diverged (lr "
                        f"{_lrs(rows)}); move tune_grid to smaller multipliers")
    best = min(finite, key=lambda r: (r["val_loss"], abs(math.log(r["multiplier"])), r["lr"]))
    ties = [r for r in finite if r["val_loss"] == best["val_loss"]]
    lrs = sorted(r["lr"] for r in rows)
    notes = []
    if len(ties) > 1:
        notes.append(f"tied with lr {_lrs([r for r in ties if r is not best])}: nearest the "
                     f"preset's lr taken")
    if best["lr"] in (lrs[0], lrs[-1]) and len(lrs) > 1:
        notes.append("at the edge of the lrs tried: the optimum may lie outside (widen tune_grid or raise "
                     "tune_extend)")
    diverged = [r for r in rows if r["status"] == DIVERGED_STATE]
    if diverged:
        notes.append(f"diverged: lr {_lrs(diverged)}")
    return {**best, "note": "; ".join(notes)}


def _lrs(rows: list[dict[str, Any]]) -> str:
    return ", ".join(format(r["lr"], "g") for r in rows)


def tune_rows(spec: StudySpec, study_dir: Path) -> list[dict[str, Any]]:
    """Every proxy's row with `chosen` set; LensError if the stage has not finished."""
    out = []
    for group in groups(spec, study_dir).values():
        missing = group.pending or ([group.next.run.run_name] if group.next else [])
        if missing:
            raise LensError(f"the tune stage has not finished: {missing[0]} has no final checkpoint; run "
                            f"`lowrank-lens study {study_dir} --stages tune`")
        best = choose(group.rows)
        note = "; ".join(n for n in (best["note"], group.note) if n)
        for r in sorted(group.rows, key=lambda r: r["lr"]):
            r["chosen"] = r["run"] == best["run"]
            r["note"] = note if r["chosen"] else ""
            out.append(r)
    return out


def tuned_lrs(spec: StudySpec, study_dir: Path) -> dict[tuple[str, str], float] | None:
    """{(scale, method): chosen lr}, or None when the study does not tune."""
    if not spec.tune:
        return None
    return {(r["scale"], r["method"]): r["lr"] for r in tune_rows(spec, study_dir) if r["chosen"]}


def write_tune_table(spec: StudySpec, study_dir: Path) -> list[dict[str, Any]]:
    """tune/tune.csv and tune/chosen.json (what the report and the runs' notes point to)."""
    rows = tune_rows(spec, study_dir)
    write_csv(rows, tune_dir(study_dir) / "tune.csv")
    chosen = [{k: r[k] for k in ("scale", "method", "lr", "preset_lr", "val_loss", "note")} for r in rows
              if r["chosen"]]
    write_json_atomic(tune_dir(study_dir) / "chosen.json", {"grid": list(spec.tune_grid), "seed": spec.tune_seed,
                                                            "fraction": spec.tune_fraction,
                                                            "extend": spec.tune_extend, "chosen": chosen})
    for c in chosen:
        log.info(f"tune: {c['scale']} {c['method']}: lr {c['lr']:g} (preset {c['preset_lr']:g}, final val_loss "
                 f"{c['val_loss']:.4f}){'; ' + c['note'] if c['note'] else ''}")
    return rows
