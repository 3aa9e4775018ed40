#!/usr/bin/env python3
"""analysis/fidelity_report.py on a hand-made replay/live pair: the two h2o variants keep their
own rows, and "Where replay predicts live" counts and splits the pairs as computed by hand.

usage: fidelity_report_test.py SOURCE_DIR"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def row(policy, crit, mass=0.9, kl=None, forced_crit=None, steps=10):
    r = {"policy": policy, "footprint_mean_ratio": 0.15, "critical_recall": crit, "mass_recall": mass, "steps": steps}
    if kl is not None:
        r["kl_mean"] = kl
        r["accuracy"] = 0.5
    if forced_crit is not None:
        r["teacher_forced"] = {"footprint_mean_ratio": 0.15, "critical_recall": forced_crit, "mass_recall": mass,
                               "steps": steps}
    return r


def main(source):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        replay = [row("full", 1.0), row("sliding_window:window=243,sinks=64", 0.80),
                  row("h2o:budget=0.15,prompt_scores=false", 0.50), row("h2o:budget=0.15", 0.90)]
        live = [row("full", 1.0, kl=0.0, forced_crit=1.0),
                row("sliding_window:window=243,sinks=64", 0.81, kl=0.1, forced_crit=0.79),  # within, both ways
                row("h2o:budget=0.15,prompt_scores=false", 0.40, kl=2.0, forced_crit=0.35),  # misses, both ways
                row("h2o:budget=0.15", 0.93, kl=0.3, forced_crit=0.91)]  # within forced, misses free running
        (out / "niah_single_2048_replay.json").write_text(json.dumps(replay))
        (out / "niah_single_2048_live.json").write_text(json.dumps(live))
        subprocess.run([sys.executable, str(Path(source) / "analysis" / "fidelity_report.py"), str(out)], check=True,
                       stdout=subprocess.DEVNULL)
        report = (out / "REPORT.md").read_text()
    expect = [
        "| h2o (prompt_scores=false) |",  # the ablation has its own row
        "| h2o | 0.150 / 0.150 / 0.150 |",  # and the default its own
        "over the 4 (policy, cell) pairs with a live run: within 0.02 of replay in 3 of 4 teacher-forced and 2 of 4 free running",
        "| KL(full ‖ p) < 0.5 | 3 | 3 of 3 | 0.010 | 2 of 3 | 0.030 |",
        "| KL(full ‖ p) ≥ 0.5 | 1 | 0 of 1 | 0.150 | 0 of 1 | 0.100 |",
        "Teacher-forced misses (policy, cell: Δ, KL): h2o (prompt_scores=false), niah_single 2K: -0.150, 2.00.",
    ]
    missing = [e for e in expect if e not in report]
    if missing:
        print("fidelity_report_test: REPORT.md lacks:\n  " + "\n  ".join(missing) + "\n--- REPORT.md ---\n" + report)
        return 1
    print("fidelity_report_test: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
