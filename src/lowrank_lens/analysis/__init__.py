"""Analysis of trained checkpoints: the metrics of docs/study.md section 2."""
