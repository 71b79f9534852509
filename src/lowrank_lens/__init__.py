"""lowrank-lens: train LLaMA-style models with full-rank and low-rank methods, then look beyond perplexity.

The Python API (api.py), for notebooks and training scripts:

    import lowrank_lens as ll
    df = ll.analyze(model, metrics="spectra")          # a pandas DataFrame, provenance in df.attrs
"""

from .api import analyze, compare, evaluate, run_config, train_run
from .callback import LensCallback, read_lens
from .errors import LensError
from .runfolder.loading import LoadedCheckpoint
from .runfolder.run import Run, load_run
from .version import __version__

__all__ = ["LensCallback", "LensError", "LoadedCheckpoint", "Run", "__version__", "analyze", "compare", "evaluate",
           "load_run", "read_lens", "run_config", "train_run"]
