"""Training: the loop, evaluation, checkpoints, logging and distributed helpers.

`train`, `load_run_config` and `default_run_name` are imported lazily so that readers of checkpoints
(analysis, reports) do not pull in the data pipeline.
"""


def __getattr__(name: str):
    if name == "load_run_config":  # reading a run's config needs no training code (run_files.py)
        from ..run_files import load_run_config

        return load_run_config
    if name in ("train", "default_run_name"):
        from . import run

        return getattr(run, name)
    raise AttributeError(name)


__all__ = ["default_run_name", "load_run_config", "train"]
