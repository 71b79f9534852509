"""lowrank-lens's own lm-evaluation-harness tasks: this folder is passed to lm-eval as an include path.

lens_mc/ is a 52-question multiple-choice smoke test about Python's standard library, written for this
project. It checks the evaluation pipeline end to end on tiny models trained on the embedded corpus
(standard-library docstrings); it is not a benchmark and its accuracy says little about a model.
"""
