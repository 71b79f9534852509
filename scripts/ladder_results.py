"""Gather the ladder's three studies (scripts/ladder.sh) into the published folder docs/results/ladder/:

    <size>/report/         the study's report (index.html, figures, tables), as rendered (PNGs quantized)
    <size>/findings/       the findings stage's records (claims, setup, headline; its tables are in report/tables)
    <size>/tune.csv        every proxy run of the tune stage, the chosen lr marked
    ppl.csv                final validation perplexity per size and method (mean, 95% CI over seeds, rank)
    claims.csv             each claim's verdict per size
    matched.csv            the metric differences at matched perplexity that are claimed (Holm, beyond the spread)
    tables.md              the same as markdown tables, for docs/results.md

Reads only the studies' files; computes nothing the findings stage did not already compute.

    python scripts/ladder_results.py STUDIES_DIR DEST
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

SIZES = ("xs", "s", "m")


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def copy_tree(src: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)


def shrink_figures(folder: Path) -> None:
    """Quantize the report's PNGs (Debian's pngquant, when installed: about a third of the bytes, the
    figures unchanged to the eye), so the published folder stays small."""
    if shutil.which("pngquant") is None:
        print("pngquant not found (apt-get install pngquant): figures copied as they are")
        return
    for png in folder.rglob("*.png"):
        subprocess.run(["pngquant", "--quality", "65-90", "--skip-if-larger", "--force", "--ext", ".png", str(png)],
                       check=False)


def size_info(study: Path) -> dict:
    run = study / "runs" / "micro-full-rank-seed0"  # the dense model: the size the ladder is matched on
    meta = sorted((run / "ckpt").glob("step_*"))[-1] / "meta.json"
    m = json.loads(meta.read_text())
    params = m["memory"]["params_total"]
    return {"params": params, "tokens": m["tokens"], "tokens_per_param": m["tokens"] / params}


def main(studies: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    ppl, claims, matched, sizes = [], [], [], []
    wall = (studies / "ladder-wall.txt").read_text().strip().splitlines() if (studies / "ladder-wall.txt").is_file() \
        else []
    for size in SIZES:
        study = studies / f"ladder-{size}"
        info = size_info(study)
        copy_tree(study / "report", dest / size / "report")
        shrink_figures(dest / size / "report")
        # The findings' tables are in the report's tables/ already; keep the findings stage's own records.
        (dest / size / "findings").mkdir(parents=True, exist_ok=True)
        for name in ("findings.json", "claims.json", "setup.json", "headline.csv"):
            shutil.copyfile(study / "findings" / name, dest / size / "findings" / name)
        shutil.copyfile(study / "tune" / "tune.csv", dest / size / "tune.csv")
        shutil.copyfile(study / "timings.json", dest / size / "timings.json")
        head = [r for r in read_csv(study / "findings" / "headline.csv") if r["column"] == "final_val_ppl"]
        chosen = {r["method"]: r for r in read_csv(study / "tune" / "tune.csv") if r["chosen"] == "True"}
        for rank, r in enumerate(sorted(head, key=lambda r: float(r["mean"])), 1):
            c = chosen[r["method"]]
            ppl.append({"size": size, "parameters": info["params"], "tokens_per_parameter":
                        round(info["tokens_per_param"], 2), "method": r["method"], "rank": rank,
                        "val_ppl_mean": float(r["mean"]), "ci_low": float(r["ci_low"]), "ci_high": float(r["ci_high"]),
                        "seeds": r["n"], "lr": c["lr"], "lr_x_preset": c["multiplier"], "tune_note": c["note"]})
        for c in json.loads((study / "findings" / "claims.json").read_text())["claims"]:
            claims.append({"size": size, "claim": c["id"], "verdict": c["verdict"], "text": c["text"]})
        for r in read_csv(study / "findings" / "matched_pairwise.csv"):
            if r["significant"] == "True":
                matched.append({"size": size, "column": r["column"], "method_a": r["method_a"],
                                "method_b": r["method_b"], "mean_a": r["mean_a"], "mean_b": r["mean_b"],
                                "p_adjusted": r["p_adjusted"]})
        sizes.append((size, info))
    write_csv(ppl, dest / "ppl.csv")
    write_csv(claims, dest / "claims.csv")
    if matched:
        write_csv(matched, dest / "matched.csv")
    (dest / "tables.md").write_text(markdown(ppl, claims, matched, sizes, wall))
    print(f"ladder results: {dest}")


def markdown(ppl, claims, matched, sizes, wall) -> str:
    out = ["## Sizes", "", "| size | parameters | tokens | tokens per parameter |", "|---|---|---|---|"]
    out += [f"| {s} | {i['params'] / 1e3:.1f}K | {i['tokens'] / 1e6:.2f}M | {i['tokens_per_param']:.1f} |"
            for s, i in sizes]
    out += ["", "## Final validation perplexity (mean over 3 seeds, 95% CI), best first, with the tuned lr", ""]
    for s, _ in sizes:
        out += [f"**{s}**", "", "| rank | method | val_ppl | 95% CI | lr (x preset) | tune note |",
                "|---|---|---|---|---|---|"]
        out += [f"| {r['rank']} | {r['method']} | {r['val_ppl_mean']:.2f} | [{r['ci_low']:.2f}, {r['ci_high']:.2f}] "
                f"| {float(r['lr']):g} (x{float(r['lr_x_preset']):g}) | {r['tune_note']} |"
                for r in ppl if r["size"] == s]
        out.append("")
    out += ["## Claims (docs/study.md §5) per size, beside the paper's", "",
            "| claim | " + " | ".join(s for s, _ in sizes) + " | paper (60m-350m) |",
            "|---|" + "---|" * len(sizes) + "---|"]
    for cid in sorted({c["claim"] for c in claims}):
        cells = [next((c["verdict"] for c in claims if c["claim"] == cid and c["size"] == s), "-") for s, _ in sizes]
        out.append(f"| {cid} | " + " | ".join(cells) + " | holds |")
    out += ["", "## Differences at matched perplexity that are claimed (Holm-corrected, beyond the seed spread)", ""]
    for s, _ in sizes:
        rows = [m for m in matched if m["size"] == s]
        cols = sorted({m["column"] for m in rows})
        out.append(f"- **{s}**: {len(rows)} pair-metric differences over {len(cols)} columns"
                   + (f" ({', '.join(cols)})" if cols else ""))
    if wall:
        out += ["", "## Wall time", "", *[f"- {w}" for w in wall]]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/ladder_results.py STUDIES_DIR DEST")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
