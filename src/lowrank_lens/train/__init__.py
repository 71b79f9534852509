"""Training: the loop, evaluation, checkpoints, logging and distributed helpers.

`train`, `load_run_config` and `default_run_name` are imported lazily so that readers of checkpoints
(analysis, reports) do not pull in the data pipeline.
"""


def __getattr__(name: str):
    if name in ("train", "load_run_config", "default_run_name"):
        from . import run

        return getattr(run, name)
    raise AttributeError(name)


__all__ = ["default_run_name", "load_run_config", "train"]
