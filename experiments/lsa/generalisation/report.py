#!/usr/bin/env python3
"""OUT/REPORT.md from what experiments/lsa/generalisation/run.sh left in OUT.

Replay: per evaluation set (heldout wording, train wording at evaluation seeds) and task, each
policy's mean footprint, critical recall and resolved fraction; the "all" row weights critical
recall and footprint by steps and the resolved fraction by the requests it counts. Live: per
set and task, accuracy and footprint of every policy. Missing stages are left out.

usage: report.py OUT
"""
import json
import sys
from pathlib import Path

SETS = [("heldout", "heldout wording (no template shared with training)"),
        ("train_eval", "training wording, unseen prompts (evaluation seeds)")]
LIVE_SETS = [("heldout", "heldout wording"), ("train", "training wording")]


def family(policy):
    """The policy's name; an lsa with another indexer than the study's names its indexer."""
    name, _, params = policy.partition(":")
    indexer = dict(p.split("=", 1) for p in params.split(",") if "=" in p).get("indexer")
    if name == "lsa" and indexer and Path(indexer).name != "indexer.h5":
        return f"lsa ({Path(indexer).stem})"
    return name


def fmt(v, digits=3):
    return "n/a" if v is None else f"{v:.{digits}f}"


def counted(r):
    """The requests a resolved fraction counts (those with a reference step: every recorded one)."""
    if r.get("resolved_fraction") is None:
        return 0
    if r["resolved_fraction"] > 0:
        return round(r["resolved_requests"] / r["resolved_fraction"])
    return r["requests"]


def pooled(rows):
    """Steps-weighted footprint and recall, request-weighted resolved fraction."""
    steps = sum(r["steps"] for r in rows)
    n = sum(counted(r) for r in rows)
    resolved = sum(r["resolved_requests"] for r in rows if counted(r))
    return {
        "requests": sum(r["requests"] for r in rows),
        "steps": steps,
        "footprint_mean_ratio": sum(r["footprint_mean_ratio"] * r["steps"] for r in rows) / steps if steps else None,
        "critical_recall": sum(r["critical_recall"] * r["steps"] for r in rows) / steps if steps else None,
        "resolved_fraction": resolved / n if n else None,
    }


def replay_tables(out):
    lines = []
    summary = {}
    for folder, title in SETS:
        files = sorted((out / "replay" / folder).glob("*.json"))
        if not files:
            continue
        by_policy = {}
        lines += [f"### Replay: {title}", "",
                  "| task | requests | policy | footprint | critical recall | resolved |", "|---|---|---|---|---|---|"]
        for f in files:
            for r in json.loads(f.read_text()):
                by_policy.setdefault(family(r["policy"]), []).append(r)
                lines.append(f"| {f.stem} | {r['requests']} | {family(r['policy'])}{' (oracle)' if r['oracle'] else ''} | "
                             f"{fmt(r['footprint_mean_ratio'])} | {fmt(r['critical_recall'])} | "
                             f"{fmt(r.get('resolved_fraction'))} |")
        for name, rows in by_policy.items():
            p = pooled(rows)
            summary[(folder, name)] = p
            lines.append(f"| **all** | {p['requests']} | {name} | {fmt(p['footprint_mean_ratio'])} | "
                         f"{fmt(p['critical_recall'])} | {fmt(p['resolved_fraction'])} |")
        lines.append("")
    if summary:
        lines += ["### Replay, all tasks: heldout against training wording", "",
                  "| policy | critical recall heldout | critical recall train wording | resolved heldout | "
                  "resolved train wording |", "|---|---|---|---|---|"]
        for name in sorted({n for _, n in summary}):
            h = summary.get(("heldout", name), {})
            t = summary.get(("train_eval", name), {})
            lines.append(f"| {name} | {fmt(h.get('critical_recall'))} | {fmt(t.get('critical_recall'))} | "
                         f"{fmt(h.get('resolved_fraction'))} | {fmt(t.get('resolved_fraction'))} |")
        lines.append("")
    return lines


def live_tables(out):
    lines = []
    for folder, title in LIVE_SETS:
        files = sorted((out / "live" / folder).glob("*.json"))
        if not files:
            continue
        lines += [f"### Live: {title}", "",
                  "| task | policy | accuracy | footprint | critical recall | resolved |", "|---|---|---|---|---|---|"]
        for f in files:
            for r in json.loads(f.read_text()):
                lines.append(f"| {f.stem} | {family(r['policy'])} | {fmt(r['accuracy'], 2)} | "
                             f"{fmt(r['footprint_mean_ratio'])} | {fmt(r['critical_recall'])} | "
                             f"{fmt(r.get('resolved_fraction'))} |")
        lines.append("")
    return lines


def indexer_lines(out):
    lines = []
    for log, title in [("indexer.log", "the study's indexer (train wording)"),
                       ("indexer_baseline.log", "the baseline indexer (--baseline-traces)")]:
        path = out / log
        if not path.exists():
            continue
        tail = [l for l in path.read_text().splitlines() if l.strip()][-4:]
        lines += [f"### Indexer training: {title} (last lines of {log})", "", "```", *tail, "```", ""]
    return lines


def policy_lines(out):
    """The full policy specs behind the short names in the tables."""
    files = sorted((out / "replay").glob("*/*.json"))
    if not files:
        return []
    return ["Policies (replay; live runs the same without the oracle, plus full):", "",
            *[f"- `{r['policy']}`" for r in json.loads(files[0].read_text())], ""]


def main():
    out = Path(sys.argv[1])
    settings = json.loads((out / "settings.json").read_text())
    lines = ["# LSA generalisation: train wording against heldout wording", "",
             "Generated by experiments/lsa/generalisation/run.sh (report.py). Settings:", "", "```",
             json.dumps(settings, indent=1), "```", ""]
    lines += policy_lines(out) + indexer_lines(out) + replay_tables(out) + live_tables(out)
    (out / "REPORT.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
