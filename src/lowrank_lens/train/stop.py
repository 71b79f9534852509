"""A graceful stop at the next step boundary, for schedulers that warn before they stop a job.

Slurm sends a signal before a time limit or a preemption (submitit asks for SIGUSR2 90 s ahead). A signal
handler cannot save a checkpoint itself: it may fire in the middle of an optimizer update. So the handler
only calls `request()`; the training loop asks `should_stop` after each update, saves the rolling resume
checkpoint there and raises `StopRequested`, and the caller (study/submit.py) requeues the job. The resumed
run continues from that exact step, so nothing that was trained is trained again.

Unarmed (the default, every plain `train` call) `should_stop` is False without any communication; armed,
all ranks agree through one all-reduce per step, so they stop at the same step even if only one got the
signal.
"""

from __future__ import annotations

from ..distributed import DistEnv

_state = {"armed": False, "requested": False}


class StopRequested(Exception):
    """Training stopped early on request; the rolling resume checkpoint holds `step`."""

    def __init__(self, step: int) -> None:
        super().__init__(f"training stopped on request after step {step} (resume checkpoint written)")
        self.step = step


def arm() -> None:
    """Make `should_stop` consult requests (call before training; it stays armed in this process)."""
    _state["armed"] = True
    _state["requested"] = False


def disarm() -> None:
    _state["armed"] = False
    _state["requested"] = False


def request() -> None:
    """Ask the training loop to stop at the next step boundary (safe inside a signal handler)."""
    _state["requested"] = True


def should_stop(env: DistEnv) -> bool:
    if not _state["armed"]:
        return False
    return bool(env.sum([1.0 if _state["requested"] else 0.0])[0] > 0)
