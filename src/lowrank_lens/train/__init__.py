"""Training: the loop, its set-up (data, model, method, optimizer, parallelism), logging and the memory check.

Readers of run folders (analysis, downstream, imports, report) never import this package: the run folder's
files are read and written through lowrank_lens.runfolder.
"""

from .run import default_run_name, train

__all__ = ["default_run_name", "train"]
