#!/usr/bin/env python3
"""Tables from experiments/gpu/exec_study.sh's outputs: measured execution next to the ledger's
model, the calibrated timing model's fidelity, and the capacity / throughput table.

    python3 analysis/gpu_exec_report.py OUT_DIR > REPORT.md

Walls per run: HBM wall = (the run's pool) // (pool pages one request held at its peak);
host wall = pinnable host RAM (96 GiB) // (one request's mirror bytes). Both come from what the
run measured (pool_peak_bytes / batch, mirror_bytes / batch), not from arithmetic alone.
"""
import json
import os
import sys

GIB = 2 ** 30
HOST_PINNABLE = 96 * GIB


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def err_line(out, name):
    try:
        with open(os.path.join(out, name + ".err")) as f:
            lines = [l.strip() for l in f if l.strip()]
        return lines[-1] if lines else ""
    except OSError:
        return ""


def execution_rows(out, names):
    print("| run | policy | footprint | critical recall | late | step ms | attention ms | model ms | "
          "modelled step ms | decode tok/s (device-bound) | link GB/s | stall ms | pool peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        d = load(os.path.join(out, name + ".json"))
        if not d:
            print(f"| {name} | — | refused: {err_line(out, name)} |||||||||||")
            continue
        for r in d:
            e = r.get("execution", {})
            print(f"| {name} | `{r['policy'][:40]}` | {r['footprint_mean_ratio']:.3f} | {r['critical_recall']:.3f} | "
                  f"{r['late_fetches']} | {e.get('step_ms_mean', 0):.2f} | {e.get('attention_ms_mean', 0):.2f} | "
                  f"{e.get('model_ms_mean', 0):.2f} | {e.get('modelled_step_ms_mean', 0):.2f} | "
                  f"{e.get('decode_tokens_per_s', 0):.0f} ({e.get('decode_tokens_per_s_device_bound', 0):.0f}) | {e.get('link_gbps', 0):.1f} | "
                  f"{e.get('stall_ms_total', 0):.1f} | {e.get('pool_peak_bytes', 0) / GIB:.2f} |")


def main():
    if len(sys.argv) != 2:
        print("usage: gpu_exec_report.py OUT_DIR", file=sys.stderr)
        sys.exit(2)
    out = sys.argv[1]
    print("# Trace-driven execution on the H200\n")
    print("## Calibration runs (64K, llama3-8b shape with random weights)\n")
    execution_rows(out, ["calibration_cal_mix_64k", "calibration_check_needle_64k"])
    fit = load(os.path.join(out, "calibration_fit.json"))
    if fit:
        print("\n## Calibrated timing model\n")
        print(f"Fitted on `{fit['steps_file']}` ({fit['steps']} steps): `{fit['flags']}`, r² {fit['r_squared']:.3f}.\n")
        print("| steps | median error | mean error | total error | default model's median error |")
        print("|---|---|---|---|---|")
        print(f"| fit ({fit['steps']}) | {100 * fit['fit_error']['median_relative']:.1f}% | "
              f"{100 * fit['fit_error']['mean_relative']:.1f}% | {100 * fit['fit_error']['total_relative']:.1f}% | |")
        for c in fit["checks"]:
            print(f"| check `{os.path.basename(c['file'])}` ({c['steps']}) | {100 * c['error']['median_relative']:.1f}% | "
                  f"{100 * c['error']['mean_relative']:.1f}% | {100 * c['error']['total_relative']:.1f}% | "
                  f"{100 * c['default_model_error']['median_relative']:.1f}% |")
    cap = sorted(n[:-5] for n in os.listdir(out) if n.startswith("cap") and n.endswith(".json"))
    cap += sorted(n[:-4] for n in os.listdir(out) if n.startswith("cap") and n.endswith(".err")
                  and not os.path.exists(os.path.join(out, n[:-4] + ".json")))
    if cap:
        print("\n## Capacity and throughput (llama3-8b shape, 16 GB of random weights in HBM)\n")
        execution_rows(out, cap)
        print("\n| run | batch | pool per request GiB | mirror per request GiB | HBM wall | host wall |")
        print("|---|---|---|---|---|---|")
        for name in cap:
            d = load(os.path.join(out, name + ".json"))
            cfg = (load(os.path.join(out, name, "config.json")) or {}).get("execution")
            if not d:
                continue
            e = d[0]["execution"]
            batch = e["batch"]
            per_pool = e["pool_peak_bytes"] / batch
            pool = (cfg or {}).get("pool_bytes", 0)
            mirror = (cfg or {}).get("mirror_bytes", 0) / batch
            hbm_wall = int(pool // per_pool) if per_pool and pool else "?"
            host_wall = int(HOST_PINNABLE // mirror) if mirror else "none"
            print(f"| {name} | {batch} | {per_pool / GIB:.2f} | {mirror / GIB:.2f} | {hbm_wall} | {host_wall} |")


if __name__ == "__main__":
    main()
