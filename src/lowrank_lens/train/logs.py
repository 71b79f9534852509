"""Run logging: log.jsonl is the source of truth; the console gets one line per interval; wandb and
tensorboard are optional sinks behind one interface. Only rank 0 writes.

A resumed run continues its tracker runs: each checkpoint's resume state records the sinks' identities (the W&B
run id, the TensorBoard log directory), and the resumed run opens the same ones (docs/design.md "The training
loop")."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol

from ..atomic import is_disk_full, write_text_atomic
from ..errors import LensError
from ..runfolder.log import parse_log

log = logging.getLogger("lowrank_lens")


TENSORBOARD_DIR = "tensorboard"


class Sink(Protocol):
    identity: dict[str, Any]
    """What a resumed run needs to continue the same tracker run (saved in every checkpoint's state.pt)."""

    def write(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class TensorBoardSink:
    """Scalars under <run>/tensorboard. A resumed run writes into the log directory its checkpoint recorded,
    with purge_step = the resumed step + 1: readers drop what the stopped process logged after that
    checkpoint, so a requeued run is one curve with each step once (a fresh run purges from step 0)."""

    def __init__(self, run_dir: Path, saved: dict[str, Any], resumed_at: int | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise LensError("the tensorboard sink needs tensorboard: pip install 'lowrank-lens[track]'") from None
        name = saved.get("log_dir")
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
            name = TENSORBOARD_DIR  # only a folder inside the run folder is taken from a checkpoint
        self.identity = {"log_dir": name}
        self.writer = SummaryWriter(str(run_dir / name), purge_step=0 if resumed_at is None else resumed_at + 1)

    def write(self, record: dict[str, Any]) -> None:
        step = record.get("step", 0)
        for k, v in record.items():
            if k != "step" and isinstance(v, int | float):
                self.writer.add_scalar(f"{record.get('kind', 'train')}/{k}", v, step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """One W&B run per training run: a resumed run passes the id (and project) its checkpoint recorded back
    as wandb.init(id=..., resume="allow"), so it continues the same W&B run. W&B takes only steps above the
    last one it received: steps the stopped process logged after the checkpoint keep their first values there
    (log.jsonl and TensorBoard hold the resumed ones; both are equal when the resume is exact)."""

    def __init__(self, run_dir: Path, config: dict[str, Any], saved: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise LensError("the wandb sink needs wandb: pip install 'lowrank-lens[track]'") from None
        saved = {k: v for k, v in saved.items() if isinstance(v, str) and v}
        target = {"project": saved.get("project") or os.environ.get("WANDB_PROJECT", "lowrank-lens")}
        if "id" in saved:  # the same run, in the project (and entity) it lives in
            target = {**target, "id": saved["id"], "resume": "allow",
                      **({"entity": saved["entity"]} if "entity" in saved else {})}
        self.run = wandb.init(name=run_dir.name, dir=str(run_dir), config=config, **target)
        self.identity = {k: v for k, v in (("id", self.run.id), ("project", self.run.project),
                                           ("entity", getattr(self.run, "entity", None))) if isinstance(v, str) and v}

    def write(self, record: dict[str, Any]) -> None:
        kind = record.get("kind", "train")
        self.run.log({f"{kind}/{k}": v for k, v in record.items() if isinstance(v, int | float) and k != "step"},
                     step=record.get("step", 0))

    def close(self) -> None:
        self.run.finish()


def saved_trackers(state: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The tracker identities a checkpoint's resume state recorded ({sink: {key: str}}), or {} (checkpoints of
    older versions, or of a run without sinks)."""
    trackers = (state or {}).get("trackers")
    if not isinstance(trackers, dict):
        return {}
    return {k: dict(v) for k, v in trackers.items() if isinstance(k, str) and isinstance(v, dict)}


class RunLogger:
    """Appends records to log.jsonl (flushed each time, so a killed run keeps what it logged)."""

    def __init__(self, run_dir: Path, enabled: bool, sinks: tuple[str, ...] = (), config: dict | None = None,
                 resumed_at: int | None = None, trackers: dict[str, dict[str, Any]] | None = None):
        """`resumed_at`: the step of the checkpoint a resumed run continues from (None: a fresh run);
        `trackers`: the identities that checkpoint recorded (saved_trackers), so each sink continues its run."""
        self.path = Path(run_dir) / "log.jsonl"
        self.enabled = enabled
        self.sinks: list[Sink] = []
        self.trackers: dict[str, dict[str, Any]] = dict(trackers or {})
        """What Trainer.save writes into each checkpoint's resume state: the open sinks' identities, and the
        saved ones of sinks not open now (a run resumed once without a sink still continues it later)."""
        if enabled:
            for name in sinks:
                saved = self.trackers.get(name, {})
                sink = (TensorBoardSink(run_dir, saved, resumed_at) if name == "tensorboard"
                        else WandbSink(run_dir, config or {}, saved))
                self.sinks.append(sink)
                self.trackers[name] = sink.identity

    def truncate_after(self, step: int) -> None:
        """On resume: drop records of steps after the checkpoint we resume from, so the log has no repeats."""
        if not self.enabled or not self.path.exists():
            return
        keep = [line for line, record in parse_log(self.path) if record.get("step", 0) <= step]
        write_text_atomic(self.path, "".join(line + "\n" for line in keep))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._append((json.dumps(record) + "\n").encode())
        for sink in self.sinks:
            sink.write(record)

    def _append(self, line: bytes) -> None:
        """One unbuffered write; if it fails or comes up short (a full disk), cut the file back to where it
        was, so the log never holds a torn line."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            try:
                if os.write(fd, line) != len(line):
                    raise OSError(errno.ENOSPC, "short write")
            except OSError as e:
                os.ftruncate(fd, end)
                if is_disk_full(e):
                    raise LensError(f"disk full while writing {self.path}; the run's checkpoints are intact — "
                                    f"free space, then rerun the same command with --resume") from None
                raise
        finally:
            os.close(fd)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def format_train_line(r: dict[str, Any], total: int, eta_s: float) -> str:
    tps = r["tok_per_s"]
    tps_s = f"{tps / 1e3:.1f}k" if tps >= 1e3 else f"{tps:.0f}"
    return (f"step {r['step']:>{len(str(total))}}/{total} | loss {r['loss']:.4f} | lr {r['lr']:.2e} | "
            f"gnorm {r['grad_norm']:.3f} | {tps_s} tok/s | eta {format_duration(eta_s)}")


def format_val_line(r: dict[str, Any]) -> str:
    return (f"val  step {r['step']} | loss {r['val_loss']:.4f} | ppl {r['val_ppl']:.2f} | "
            f"ppl (reference metric) {r['val_ppl_reference']:.2f}")
