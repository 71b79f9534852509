"""Run logging: log.jsonl is the source of truth; the console gets one line per interval; wandb and
tensorboard are optional sinks behind one interface. Only rank 0 writes."""

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


class Sink(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class TensorBoardSink:
    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise LensError("the tensorboard sink needs tensorboard: pip install 'lowrank-lens[track]'") from None
        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        step = record.get("step", 0)
        for k, v in record.items():
            if k != "step" and isinstance(v, int | float):
                self.writer.add_scalar(f"{record.get('kind', 'train')}/{k}", v, step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise LensError("the wandb sink needs wandb: pip install 'lowrank-lens[track]'") from None
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "lowrank-lens"), name=run_dir.name,
                              dir=str(run_dir), config=config)

    def write(self, record: dict[str, Any]) -> None:
        kind = record.get("kind", "train")
        self.run.log({f"{kind}/{k}": v for k, v in record.items() if isinstance(v, int | float) and k != "step"},
                     step=record.get("step", 0))

    def close(self) -> None:
        self.run.finish()


class RunLogger:
    """Appends records to log.jsonl (flushed each time, so a killed run keeps what it logged)."""

    def __init__(self, run_dir: Path, enabled: bool, sinks: tuple[str, ...] = (), config: dict | None = None):
        self.path = Path(run_dir) / "log.jsonl"
        self.enabled = enabled
        self.sinks: list[Sink] = []
        if enabled:
            for name in sinks:
                sink = TensorBoardSink(run_dir) if name == "tensorboard" else WandbSink(run_dir, config or {})
                self.sinks.append(sink)

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
