#!/usr/bin/env python3
"""An independent reading of LSA's lookahead labels (core/lookahead.hpp) and of the indexer
checkpoint (traces/FORMAT.md, "Indexer checkpoints"), in numpy: it recomputes
`kvlab indexer eval`'s recall@k from the trace and the checkpoint files alone, so a change of
definition on either side shows up as a mismatch.

usage: python3 analysis/indexer_reference.py INDEXER.h5 TRACE.h5 [--k 8,16,64] [--check EVAL.json]
       (needs numpy and h5py; --check compares with `kvlab indexer eval --json` output and exits 1
       on a difference above 1e-9)
"""
import argparse
import json
import math
import sys

try:
    import h5py
    import numpy as np
except ImportError:
    sys.exit("indexer_reference.py: needs numpy and h5py (pip install numpy h5py)")


def critical_chunks(values, index, p):
    """The fewest chunks reaching mass p, in decreasing mass (ties by chunk); sparse rows come
    sorted and contribute only what they list."""
    if index is None:
        order = sorted(np.flatnonzero(values > 0), key=lambda c: (-values[c], c))
        values = values[order]
        index = np.asarray(order, dtype=np.int64)
        p = min(p, float(values.sum()))
    taken, total = [], 0.0
    for c, v in zip(index, values):
        if total >= p:
            break
        taken.append(int(c))
        total += float(v)
    return taken


def step_rows(group, rows, t, n_chunks):
    """(values, index) per row of step t; index None for dense rows."""
    if group.attrs["mass_storage"] == "dense":
        mass = group["mass"][t].reshape(rows, -1)[:, :n_chunks].astype(np.float64)
        return [(mass[r], None) for r in range(rows)]
    ptr = group["mass_indptr"][t * rows:(t + 1) * rows + 1]
    index = group["mass_index"][ptr[0]:ptr[-1]]
    value = group["mass_value"][ptr[0]:ptr[-1]].astype(np.float64)
    return [(value[a - ptr[0]:b - ptr[0]], index[a - ptr[0]:b - ptr[0]]) for a, b in zip(ptr[:-1], ptr[1:])]


def lookahead_positives(group, rows, chunk_tokens, t, labels):
    """Candidates at a refresh at step t and which of them are critical in [t, t + tau)."""
    n = int(group.attrs["prompt_tokens"]) + t + 1
    first = (min(labels["sinks"], n) + chunk_tokens - 1) // chunk_tokens
    end = min(max(n - labels["window"], 0) // chunk_tokens, n // chunk_tokens)
    critical = set()
    for s in range(t, t + labels["tau"]):
        n_chunks = -(-(int(group.attrs["prompt_tokens"]) + s + 1) // chunk_tokens)
        for values, index in step_rows(group, rows, s, n_chunks):
            critical.update(critical_chunks(values, index, labels["critical_mass"]))
    candidates = np.arange(first, end)
    return candidates, np.array([c in critical for c in candidates], dtype=bool)


def tower(tensors, name, depth, activation, skip, x):
    h = x
    for layer in range(depth + 1):
        h = h @ tensors[f"{name}.layers.{layer}.weight"][...].T + tensors[f"{name}.layers.{layer}.bias"][...]
        if layer < depth:
            h = np.maximum(h, 0) if activation == "relu" else 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    if skip and depth > 0:
        h = h + x @ tensors[f"{name}.skip.weight"][...].T
    return h


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("indexer")
    ap.add_argument("trace")
    ap.add_argument("--k", default="8,16,32,64,128,256")
    ap.add_argument("--check", help="kvlab indexer eval --json output to compare with")
    args = ap.parse_args()
    ks = [int(k) for k in args.k.split(",")]
    ckpt = h5py.File(args.indexer, "r")
    cfg = json.loads(ckpt.attrs["config_json"])
    tensors, labels = ckpt["tensors"], cfg["labels"]
    pool = cfg.get("query_pool", 1)
    scale = math.sqrt(cfg["dim"]) if cfg["scale_scores"] else 1.0
    embed = {side: lambda x, side=side: tower(tensors, f"{side}_tower", cfg["depth"], cfg["activation"],
                                              cfg.get("skip", False),
                                              (x - tensors[f"{side}_norm.mean"][...]) / tensors[f"{side}_norm.stddev"][...])
             for side in ("query", "key")}
    trace = h5py.File(args.trace, "r")
    rows = int(trace.attrs["n_layers"])  # times the stored heads, per request below
    chunk_tokens = int(trace.attrs["chunk_tokens"])
    hits, positives, groups = np.zeros(len(ks)), 0, 0
    for rid in sorted(trace["requests"]):
        g = trace["requests"][rid]
        g_rows = rows * int(g.attrs["n_heads_stored"])
        keys = embed["key"](g["chunk_features"][...].astype(np.float64))
        steps = int(g.attrs["decode_steps"])
        for t in range(0, steps - labels["tau"] + 1, labels["tau"]):  # a deployed policy's refresh points
            candidates, positive = lookahead_positives(g, g_rows, chunk_tokens, t, labels)
            query = g["query"][max(0, t - pool + 1):t + 1].astype(np.float64).mean(0)
            scores = keys[candidates] @ embed["query"](query[None])[0] / scale
            order = np.argsort(-scores, kind="stable")
            hits += [positive[order[:k]].sum() for k in ks]
            positives += int(positive.sum())
            groups += 1
    recall = {f"recall@{k}": (h / positives if positives else 1.0) for k, h in zip(ks, hits)}
    print(json.dumps({**recall, "positives": positives, "groups": groups}))
    if args.check:
        theirs = json.load(open(args.check))
        bad = [k for k in recall if abs(recall[k] - theirs[k]) > 1e-9]
        bad += [k for k in ("positives", "groups") if theirs[k] != {"positives": positives, "groups": groups}[k]]
        if bad:
            sys.exit(f"indexer_reference.py: differs from {args.check} in {', '.join(bad)}")
        print(f"matches {args.check}")


if __name__ == "__main__":
    main()
