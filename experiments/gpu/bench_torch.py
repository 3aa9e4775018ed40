#!/usr/bin/env python3
"""torch baselines at the points kvlab_kernel_bench measures, in the same device run.

    python3 experiments/gpu/bench_torch.py [--kernels-tsv OUT/bench_kernels.tsv] [--out OUT/bench_torch.tsv]

Times torch.nn.functional.scaled_dot_product_attention (cuDNN backend where it accepts the
shape, else the backend torch picks, named in the table) for one decode query over dense KV
at llama3-8b shape (32 query heads, 8 KV heads, head dim 128), per layer and as 32 per-layer
calls of a step; and torch.topk. Method as the C++ bench: CUDA events around each call, the
stream backed up first (torch.cuda._sleep) so launch overhead is not timed as idle, warm-up,
median; random inputs (never zeros) rotated over > 1 GB of buffers.

Prints "TABLE ..." lines; with --kernels-tsv, also kvlab / torch ratios per point.
"""
import argparse
import csv
import math
import statistics
import sys

import torch
import torch.nn.functional as F

KV_HEADS, HEADS, HEAD_DIM, LAYERS = 8, 32, 128, 32
ROTATE_BYTES = 1 << 30


def ctx_name(ctx):
    return f"{ctx >> 20}M" if ctx >= (1 << 20) else f"{ctx >> 10}K"


def median_ms(fn, warmup, reps):
    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for i in range(reps):
        torch.cuda._sleep(60000)  # ~30 us at 2 GHz: the stream is busy when `a` is recorded
        a.record()
        fn(warmup + i)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def sdpa_backends():
    from torch.nn.attention import SDPBackend
    return [("cudnn", [SDPBackend.CUDNN_ATTENTION]),
            ("flash", [SDPBackend.FLASH_ATTENTION]),
            ("efficient", [SDPBackend.EFFICIENT_ATTENTION])]


def pick_sdpa(q, k, v):
    """The first backend that runs this shape with GQA, as (name, callable)."""
    from torch.nn.attention import sdpa_kernel
    for name, backend in sdpa_backends():
        def call(q, k, v, backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        try:
            call(q, k, v)
            torch.cuda.synchronize()
            return name, call
        except Exception as e:  # this backend refuses the shape; try the next
            print(f"note: sdpa {name} refused batch={q.shape[0]} ctx={k.shape[2]}: {str(e).splitlines()[0][:120]}",
                  file=sys.stderr)
    return None, None


def warmup_for(sets):
    """Warm-up calls before timing: at least one on every rotated set. A set's first call is
    slower (at 32K x 1, cuDNN's first calls on fresh buffers ran at under half its rate), and
    with fewer warm-ups than sets, --quick's 5 timed calls were all first calls."""
    return max(3, len(sets))


def kv_sets(batch, ctx, layers=1):
    per = 2 * batch * KV_HEADS * ctx * HEAD_DIM * 2 * layers
    copies = max(1, min(math.ceil(ROTATE_BYTES / per), 8))
    sets = []
    for _ in range(copies):
        layer_kv = []
        for _ in range(layers):
            k = torch.randn(batch, KV_HEADS, ctx, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
            v = torch.randn_like(k)
            layer_kv.append((k, v))
        sets.append(layer_kv)
    return sets, per


def dense_points(rows, reps):
    for ctx in (32 << 10, 128 << 10, 512 << 10, 1 << 20):
        for batch in (1, 8):
            sets, nbytes = kv_sets(batch, ctx)
            q = torch.randn(batch, HEADS, 1, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
            name, call = pick_sdpa(q, *sets[0][0])
            point = f"ctx={ctx_name(ctx)} batch={batch}"
            if call is None:
                print(f"TABLE torch dense 1 layer {point:18s} no SDPA backend ran")
                continue
            ms = median_ms(lambda i: call(q, *sets[i % len(sets)][0]), warmup_for(sets), reps)
            rows.append(("dense_layer", point, f"torch_sdpa_{name}", ms, nbytes))
            print(f"TABLE torch dense 1 layer {point:18s} sdpa[{name}] {ms:8.3f} ms {nbytes / ms / 1e9:5.2f} TB/s")
            del sets
            torch.cuda.empty_cache()


def all_layers(rows, reps):
    for ctx in (32 << 10, 128 << 10):
        sets, nbytes = kv_sets(1, ctx, LAYERS)
        q = torch.randn(1, HEADS, 1, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
        name, call = pick_sdpa(q, *sets[0][0])
        point = f"ctx={ctx_name(ctx)} batch=1"

        def step(i):
            for k, v in sets[i % len(sets)]:
                call(q, k, v)
        ms = median_ms(step, warmup_for(sets), reps)
        rows.append(("dense_all_layers", point, f"torch_sdpa_{name}", ms, nbytes))
        print(f"TABLE torch dense 32 layers (32 calls) {point:12s} sdpa[{name}] {ms:8.3f} ms {nbytes / ms / 1e9:5.2f} TB/s")
        del sets
        torch.cuda.empty_cache()


def topk_points(rows, reps):
    copies = 8
    scores = [torch.randn(1 << 20, device="cuda", dtype=torch.float32) for _ in range(copies)]
    for n in (16 << 10, 64 << 10, 1 << 20):
        for k in (64, 256, 4096):
            for sort in (True, False):
                ms = median_ms(lambda i: torch.topk(scores[i % copies][:n], k, sorted=sort), 5, reps)
                variant = "torch_topk_sorted" if sort else "torch_topk_unsorted"
                point = f"n={ctx_name(n)} k={k}"
                rows.append(("topk", point, variant, ms, n * 4))
                print(f"TABLE torch topk {point:14s} {'sorted' if sort else 'unsorted':8s} {ms * 1e3:7.1f} us")


def ratios(kernels_tsv, torch_rows):
    """kvlab / torch per (bench, point): TB/s ratios for attention, time ratios for top-k."""
    try:
        with open(kernels_tsv) as f:
            ours = [r for r in csv.DictReader(f, delimiter="\t")]
    except OSError as e:
        print(f"TABLE ratio: no kvlab results ({e})")
        return
    best = {}
    for r in ours:
        key = (r["bench"], r["point"])
        ms = float(r["ms"])
        if r["bench"] in ("dense_layer", "dense_all_layers") and r["variant"] != "kvlab":
            continue
        if key not in best or ms < best[key]:
            best[key] = ms
    for bench, point, variant, ms, nbytes in torch_rows:
        ours_ms = best.get((bench, point))
        if ours_ms is None:
            continue
        if bench == "topk":
            if variant == "torch_topk_sorted":
                continue
            print(f"TABLE ratio topk {point:14s} kvlab {ours_ms * 1e3:7.1f} us vs torch unsorted {ms * 1e3:7.1f} us:"
                  f" {ms / ours_ms:5.2f}x faster")
        else:
            print(f"TABLE ratio {bench:16s} {point:18s} kvlab {nbytes / ours_ms / 1e9:5.2f} TB/s vs {variant}"
                  f" {nbytes / ms / 1e9:5.2f} TB/s: {ms / ours_ms:5.2f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernels-tsv", default="")
    ap.add_argument("--out", default="bench_torch.tsv")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_torch: no CUDA device", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    print(f"TABLE torch {torch.__version__} on {torch.cuda.get_device_name()}")
    reps = 5 if args.quick else 15
    rows = []
    dense_points(rows, reps)
    all_layers(rows, reps)
    topk_points(rows, 10 if args.quick else 50)
    with open(args.out, "w") as f:
        f.write("bench\tpoint\tvariant\tms\tbytes\n")
        for r in rows:
            f.write("\t".join(str(x) for x in r) + "\n")
    if args.kernels_tsv:
        ratios(args.kernels_tsv, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
