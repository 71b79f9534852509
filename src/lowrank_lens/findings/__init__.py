"""The study's findings as pure functions: statistics, comparisons and verdicts over rows already read.

Nothing here reads or writes a file of a study, trains, loads a checkpoint or renders: the study's findings
stage (study/findings_stage.py) reads the earlier stages' files (report/collect.py), calls these functions
and writes their tables (layout: report/findings_files.py), and the report renders them. This package
imports neither train/, study/ nor report/ (tests/test_import_layers.py).

    common.py       the helpers every part shares: `finite`, `final_rows`
    statistics.py   seed summaries, intervals and orderings, pairwise differences over seeds
    matched.py      the checkpoint of each run at matched perplexity (or equal step / tokens)
    verdicts.py     the claims' vocabulary: verdicts, claim texts (claims.json), comparisons of seed means
    claims.py       the claims check of docs/study.md §5
    prediction.py   downstream accuracy from perplexity vs perplexity + metrics (nested-CV ridge)
    setup.py        the study's setup beside the paper's protocol
    parts.py        every part of the findings from a study's tables, each computed on its own
"""
