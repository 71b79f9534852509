#!/usr/bin/env bash
# The CPU ladder of docs/results.md, from a clean start: the three sizes' studies one after the other (each
# tunes, trains, analyses, evaluates, reports; rerunning resumes), then the published folder and tables.
#   bash scripts/ladder.sh [STUDIES_DIR]        (default: studies/; about an hour on 2 idle cores)
set -euo pipefail
out=${1:-studies}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
: > "$out/ladder-wall.txt"
start=$(date +%s)
for size in xs s m; do
  t0=$(date +%s)
  lowrank-lens study "ladder-$size" --out "$out/ladder-$size"
  echo "ladder-$size: $(( $(date +%s) - t0 )) s" | tee -a "$out/ladder-wall.txt"
done
echo "ladder: $(( $(date +%s) - start )) s in all" | tee -a "$out/ladder-wall.txt"
python "$root/scripts/ladder_results.py" "$out" "$root/docs/results/ladder"
