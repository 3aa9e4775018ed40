#!/usr/bin/env python3
"""The README's accuracy tables (one per source) from a finished sweep of accuracy_table.toml or
accuracy_table_gpu.toml, in the README's columns, as Markdown on stdout.

usage: python3 experiments/live/table.py DIR     (DIR: the sweep's out_dir, with results.json)
"""
import json
import re
import sys
from pathlib import Path


def short_spec(spec):
    """The canonical spec without the indexer's path and the parameters every row shares."""
    spec = re.sub(r"(indexer|index_dtype_bytes|seed)=[^,]*,?", "", spec)
    return spec.rstrip(",:")


def number(v, digits=3):
    return "n/a" if v is None else f"{v:.{digits}f}"


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: python3 experiments/live/table.py DIR")
    path = Path(sys.argv[1]) / "results.json"
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"table.py: {path}: {e} (run the sweep to the end first)")
    by_source = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r)
    for source, rs in by_source.items():
        print(f"{source} (seed {rs[0]['seed']}, {rs[0]['requests']} samples):\n")
        print("| policy | accuracy | footprint | crit. recall | mass recall | KL(full‖p) | top-1 agree |")
        print("|---|---|---|---|---|---|---|")
        for r in rs:
            kl = r.get("kl_mean")
            print(f"| {short_spec(r['policy'])} | {number(r.get('accuracy'))} | {number(r['footprint_mean_ratio'])} | "
                  f"{number(r['critical_recall'])} | {number(r['mass_recall'])} | "
                  f"{'0' if kl == 0 else number(kl)} | {number(r.get('top1_agreement'))} |")
        print()


if __name__ == "__main__":
    main()
