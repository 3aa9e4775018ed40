#!/usr/bin/env python3
"""kvlab's GPU decoder against Hugging Face transformers on the same GGUF, at prompt positions
up to 8K: the top-1 next token at each position and the relative logit error
max|kvlab - hf| / max|hf| (and the L2 one).

kvlab writes its logits with `kvlab generate --backend cuda --dump-logits FILE --positions LIST`
(float32 .npy [positions x vocab] and FILE.json with the prompt's token ids); this script feeds
the same token ids to transformers' model (AutoModelForCausalLM.from_pretrained(dir,
gguf_file=...), dequantised to float32 by the `gguf` package) in one forward pass and compares
the rows. The prompt is a long synthetic document (numbered sentences with a few facts), so
the positions probe attention over the whole context, not a repeated pattern.

    python3 experiments/gpu/hf_reference.py --kvlab build/bin/kvlab \\
        --model models/SmolLM2-135M-Instruct.Q4_1.gguf --out results/hf_reference

Options: --positions (default 0,63,511,1023,2047,4095,6143,8191), --backend cuda|cpu (what
kvlab decodes with), --reference hf|kvlab-cpu (kvlab-cpu compares with kvlab's CPU decoder
instead, needs no torch), --device (torch device, default cuda if available), --logits FILE
(reuse a dump). Writes OUT/prompt.txt, OUT/kvlab_logits.npy(.json), OUT/hf_reference.json and
prints TABLE lines. Exit 0 when it ran (the JSON says whether every top-1 agreed), 1 on a
failure, 2 on bad arguments.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

DEFAULT_POSITIONS = "0,63,511,1023,2047,4095,6143,8191"


def synthetic_document(sentences):
    """Deterministic text: numbered sentences naming places, objects and numbers."""
    places = ["harbour", "library", "orchard", "station", "market", "observatory", "mill", "bridge"]
    things = ["lantern", "compass", "ledger", "kettle", "violin", "telescope", "anchor", "basket"]
    colours = ["red", "blue", "green", "amber", "silver", "violet", "ochre", "white"]
    lines = []
    for i in range(sentences):
        p, t, c = places[i % 8], things[(i * 3) % 8], colours[(i * 5) % 8]
        lines.append(f"Note {i}: near the {p} someone left a {c} {t}, and its number was {(i * 7919) % 10007}.")
        if i % 97 == 13:
            lines.append(f"Remember this: the secret code for the {p} is {(i * 104729) % 99991}.")
    return " ".join(lines)


def usage_error(text):
    print(f"hf_reference: error: {text}", file=sys.stderr)
    sys.exit(2)


def parse_positions(text):
    try:
        positions = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        usage_error(f"--positions must be comma-separated integers, got '{text}'")
    if not positions or positions[0] < 0:
        usage_error("--positions needs non-negative positions")
    return positions


def dump_kvlab(args, backend, positions, prompt_file, out_file):
    cmd = [args.kvlab, "generate", "--model", args.model, "--backend", backend, "--prompt-file", prompt_file,
           "--dump-logits", out_file, "--positions", ",".join(str(p) for p in positions)]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"hf_reference: error: {' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return time.time() - t0


def read_dump(path):
    """The logits and metadata kvlab generate --dump-logits wrote."""
    logits = np.load(path)
    with open(path + ".json") as f:
        meta = json.load(f)
    if list(logits.shape) != list(meta["logits_shape"]):
        sys.exit(f"hf_reference: error: {path}: shape {logits.shape} differs from its JSON {meta['logits_shape']}")
    return logits, meta


def hf_logits(model_path, tokens, positions, device):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(model_path)),
                                                 gguf_file=os.path.basename(model_path), dtype=torch.float32)
    # Loaded from a GGUF, the model is already dequantised to the dtype asked for; transformers
    # refuses .float() on it ("not supported for quantized model").
    model = model.to(device).eval()
    ids = torch.tensor([tokens[: positions[-1] + 1]], dtype=torch.long, device=device)
    with torch.no_grad():
        out = model(input_ids=ids).logits[0]
    return out[torch.tensor(positions, device=device)].float().cpu().numpy()


def compare(ours, ref, positions):
    rows = []
    for i, p in enumerate(positions):
        a, b = ours[i].astype(np.float64), ref[i].astype(np.float64)
        rows.append({"position": p,
                     "top1_kvlab": int(a.argmax()), "top1_reference": int(b.argmax()),
                     "top1_equal": bool(a.argmax() == b.argmax()),
                     "max_rel_logit_error": float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)),
                     "l2_rel_logit_error": float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kvlab", default="build/bin/kvlab")
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", required=True)
    ap.add_argument("--positions", default=DEFAULT_POSITIONS)
    ap.add_argument("--backend", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--reference", choices=["hf", "kvlab-cpu"], default="hf")
    ap.add_argument("--device", default=None)
    ap.add_argument("--logits", default=None, help="an existing kvlab dump to compare instead of running kvlab")
    args = ap.parse_args()
    positions = parse_positions(args.positions)
    if not os.path.isfile(args.model):
        sys.exit(f"hf_reference: error: {args.model}: no such model file (scripts/fetch-model.sh)")
    os.makedirs(args.out, exist_ok=True)
    prompt_file = os.path.join(args.out, "prompt.txt")
    # About 25 tokens per sentence: enough sentences that the prompt outlasts the last position.
    with open(prompt_file, "w") as f:
        f.write(synthetic_document(positions[-1] // 20 + 16))

    timing = {}
    ours_file = args.logits or os.path.join(args.out, "kvlab_logits.npy")
    if args.logits is None:
        timing["kvlab_seconds"] = dump_kvlab(args, args.backend, positions, prompt_file, ours_file)
    ours, meta = read_dump(ours_file)
    if meta["positions"] != positions:
        sys.exit(f"hf_reference: error: {ours_file} holds positions {meta['positions']}, not {positions}")
    tokens = meta["tokens"]

    t0 = time.time()
    if args.reference == "hf":
        try:
            import torch
        except ImportError:
            sys.exit("hf_reference: error: torch is not installed (use --reference kvlab-cpu without it)")
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        ref = hf_logits(args.model, tokens, positions, device)
        reference = f"transformers (float32, {device})"
    else:
        ref_file = os.path.join(args.out, "kvlab_cpu_logits.npy")
        dump_kvlab(args, "cpu", positions, prompt_file, ref_file)
        ref, ref_meta = read_dump(ref_file)
        if ref_meta["tokens"] != tokens:
            sys.exit("hf_reference: error: the CPU and GPU dumps tokenised the prompt differently")
        reference = "kvlab cpu decoder (float32)"
    timing["reference_seconds"] = time.time() - t0
    if ref.shape != ours.shape:
        sys.exit(f"hf_reference: error: reference logits {ref.shape} and kvlab's {ours.shape} differ in shape")

    rows = compare(ours, ref, positions)
    result = {"model": args.model, "kvlab_backend": meta.get("backend", args.backend), "reference": reference,
              "prompt_tokens": len(tokens), "positions": rows,
              "top1_agreement": sum(r["top1_equal"] for r in rows) / len(rows),
              "max_rel_logit_error": max(r["max_rel_logit_error"] for r in rows), **timing}
    tmp = os.path.join(args.out, "hf_reference.json.tmp")
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, os.path.join(args.out, "hf_reference.json"))
    for r in rows:
        print(f"TABLE hf_reference pos {r['position']:5d}: top1 {'equal' if r['top1_equal'] else 'DIFFERS'} "
              f"({r['top1_kvlab']} vs {r['top1_reference']}), max rel logit error {r['max_rel_logit_error']:.3g}, "
              f"L2 rel {r['l2_rel_logit_error']:.3g}")
    print(f"TABLE hf_reference kvlab {result['kvlab_backend']} vs {reference}: top-1 agreement "
          f"{result['top1_agreement']:.3f} over {len(rows)} positions, max relative logit error "
          f"{result['max_rel_logit_error']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
