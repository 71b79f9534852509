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
  smaller one. A choice at either end of the grid is flagged "at the grid's edge" (the optimum may lie
  outside: widen `tune_grid`). If every proxy of a (scale, method) diverged, the stage stops with one line.

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

from ..atomic import write_json_atomic
from ..errors import LensError, TrainingDiverged
from ..train.checkpoint import complete_checkpoints, read_meta
from .spec import PlannedRun, StudySpec, plan_runs

log = logging.getLogger("lowrank_lens")

TUNE_DIR = "tune"
DIVERGED = "diverged.json"
OK, DIVERGED_STATE, MISSING = "ok", "diverged", "not trained"


@dataclass(frozen=True)
class ProxyRun:
    scale: str
    method: str
    lr: float
    multiplier: float
    centre: float
    """The method preset's lr (after the study's overrides) that the grid multiplies."""
    run: PlannedRun


def tune_dir(study_dir: Path) -> Path:
    return Path(study_dir) / TUNE_DIR


def proxy_runs_dir(study_dir: Path) -> Path:
    return tune_dir(study_dir) / "runs"


def _proxy_overrides(spec: StudySpec, base: PlannedRun, lr: float) -> list[str]:
    ov = [o for o in base.overrides if not o.startswith("train.seed=")]
    ov += [f"optim.lr={lr!r}", f"train.seed={spec.tune_seed}", "train.checkpoints=1", "train.eval_every=0"]
    if spec.tune_fraction < 1:
        steps = max(1, round(base.cfg.train.steps * spec.tune_fraction))
        warmup = round(base.cfg.optim.warmup_steps * spec.tune_fraction)
        ov += [f"train.steps={steps}", f"optim.warmup_steps={warmup}"]
    return ov


def plan_proxies(spec: StudySpec) -> list[ProxyRun]:
    """Every proxy run of the study's tune stage (none when `tune` is off), scale-major like plan_runs."""
    if not spec.tune:
        return []
    from ..presets import build_config

    bases = {(r.scale, r.method): r for r in plan_runs(spec)}
    out = []
    for (scale, method), base in bases.items():
        centre = base.cfg.optim.lr
        for m in spec.tune_grid:
            lr = float(f"{centre * m:.6g}")  # a short, exact name and override for each grid point
            ov = _proxy_overrides(spec, base, lr)
            name = f"{scale}-{method}-lr{lr:g}"
            try:
                cfg = build_config(scale, method, ov)
            except LensError as e:
                raise LensError(f"study tune proxy {name}: {e}; change tune_grid") from None
            out.append(ProxyRun(scale, method, lr, m, centre, PlannedRun(scale, method, spec.tune_seed, cfg, name,
                                                                       tuple(ov))))
    return out


# ---- training the proxies --------------------------------------------------------------------------------
def proxy_state(proxy: ProxyRun, runs_dir: Path) -> str:
    run_dir = runs_dir / proxy.run.run_name
    if (run_dir / DIVERGED).is_file():
        return DIVERGED_STATE
    done = [s for s, p in complete_checkpoints(run_dir) if p.name != "resume"] if run_dir.is_dir() else []
    return OK if done and done[-1] >= proxy.run.cfg.train.steps else MISSING


def train_proxy(proxy: ProxyRun, runs_dir: Path) -> str:
    """Train (or resume) one proxy; a divergence is recorded, not raised. Returns its state."""
    from ..atomic import write_json_atomic as write
    from ..train import train

    state = proxy_state(proxy, runs_dir)
    if state != MISSING:
        return state
    try:
        train(proxy.run.cfg, runs_dir, run_name=proxy.run.run_name, resume=True)
    except TrainingDiverged as e:
        write(runs_dir / proxy.run.run_name / DIVERGED, {"step": e.step, "error": str(e)})
        log.info(f"tune: {proxy.run.run_name} diverged at step {e.step} (a data point, not an error)")
        return DIVERGED_STATE
    return OK


def tune_all(spec: StudySpec, out: Path) -> list[dict[str, Any]]:
    """The whole stage in this process (or `spec.jobs` workers): train the missing proxies, write the table."""
    from .runner import run_in_workers

    proxies = plan_proxies(spec)
    runs_dir = proxy_runs_dir(out)
    todo = [p for p in proxies if proxy_state(p, runs_dir) == MISSING]
    log.info(f"tune: {len(proxies) - len(todo)} of {len(proxies)} proxy runs already finished, {len(todo)} to train")
    run_in_workers(_train_proxy_job, [(p, runs_dir) for p in todo], [p.run for p in todo], spec.jobs, "tune")
    return write_tune_table(spec, out)


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
        from ..run_files import read_json_object

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
        notes.append("at the grid's edge: the optimum may lie outside (widen tune_grid)")
    diverged = [r for r in rows if r["status"] == DIVERGED_STATE]
    if diverged:
        notes.append(f"diverged: lr {_lrs(diverged)}")
    return {**best, "note": "; ".join(notes)}


def _lrs(rows: list[dict[str, Any]]) -> str:
    return ", ".join(format(r["lr"], "g") for r in rows)


def tune_rows(spec: StudySpec, study_dir: Path) -> list[dict[str, Any]]:
    """Every proxy's row with `chosen` set; LensError if a proxy has not finished."""
    runs_dir = proxy_runs_dir(study_dir)
    rows = [proxy_row(p, runs_dir) for p in plan_proxies(spec)]
    missing = [r["run"] for r in rows if r["status"] == MISSING]
    if missing:
        raise LensError(f"the tune stage has not finished: {len(missing)} of {len(rows)} proxy runs have no final "
                        f"checkpoint (e.g. {missing[0]}); run `lowrank-lens study {study_dir} --stages tune`")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["scale"], r["method"]), []).append(r)
    for group in groups.values():
        best = choose(group)
        for r in group:
            r["chosen"] = r is best or r["run"] == best["run"]
            r["note"] = best["note"] if r["chosen"] else ""
    return rows


def tuned_lrs(spec: StudySpec, study_dir: Path) -> dict[tuple[str, str], float] | None:
    """{(scale, method): chosen lr}, or None when the study does not tune."""
    if not spec.tune:
        return None
    return {(r["scale"], r["method"]): r["lr"] for r in tune_rows(spec, study_dir) if r["chosen"]}


def write_tune_table(spec: StudySpec, study_dir: Path) -> list[dict[str, Any]]:
    """tune/tune.csv and tune/chosen.json (what the report and the runs' notes point to)."""
    from ..analysis.tables import write_csv

    rows = tune_rows(spec, study_dir)
    write_csv(rows, tune_dir(study_dir) / "tune.csv")
    chosen = [{k: r[k] for k in ("scale", "method", "lr", "preset_lr", "val_loss", "note")} for r in rows
              if r["chosen"]]
    write_json_atomic(tune_dir(study_dir) / "chosen.json", {"grid": list(spec.tune_grid), "seed": spec.tune_seed,
                                                            "fraction": spec.tune_fraction, "chosen": chosen})
    for c in chosen:
        log.info(f"tune: {c['scale']} {c['method']}: lr {c['lr']:g} (preset {c['preset_lr']:g}, final val_loss "
                 f"{c['val_loss']:.4f}){'; ' + c['note'] if c['note'] else ''}")
    return rows


def tune_note(spec: StudySpec, lr: float) -> str:
    steps = f"{spec.tune_fraction:g} of the run's steps" if spec.tune_fraction < 1 else "the run's own steps"
    return (f"optim.lr {lr:g} chosen by the study's tune stage (tune/tune.csv: lowest final validation loss over "
            f"the preset lr x {', '.join(f'{m:g}' for m in spec.tune_grid)}, {steps}, seed {spec.tune_seed})")
