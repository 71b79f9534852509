"""Analysis of trained checkpoints: the metrics of paper.md section 2."""
