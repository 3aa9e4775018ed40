#!/usr/bin/env python3
"""Compare kvlab's CPU decoder with Hugging Face transformers on the same GGUF file.

kvlab side (any machine):
    kvlab generate --prompt-file TEXT --dump-logits logits.npy --positions 0,1,100,1000,4095
writes logits.npy (float32 [positions x vocab]) and logits.npy.json ({"tokens": every prompt
token id, "tokens_run": how many were run, "positions": [...], "text": the prompt, "model": path}).

Reference side (needs python3 with numpy, torch, transformers and the pure-Python `gguf`
package; transformers dequantises the GGUF to float32 when loading it):
    python3 scripts/compare_logits.py --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --dump logits.npy [--device cuda] [--out report.json]

Runs the same token ids through transformers' LlamaForCausalLM (float32, eager attention) and
prints, per position, the top-1 token of each side and the maximum relative logit error
max|kvlab - hf| / max|hf|; also compares the tokenizers on the prompt text. Not part of CI.
"""
import argparse
import json
import os
import sys

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--gguf", required=True, help="the GGUF file kvlab ran")
    ap.add_argument("--dump", required=True, help="kvlab's logits .npy (its .json beside it)")
    ap.add_argument("--device", default="cuda" if os.environ.get("CUDA_VISIBLE_DEVICES", "x") != "" else "cpu")
    ap.add_argument("--out", help="write the report as JSON here")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = json.load(open(args.dump + ".json"))
    ours = np.load(args.dump)
    positions = meta["positions"]
    tokens = meta["tokens"]
    n_run = meta.get("tokens_run", max(positions) + 1)
    folder, name = os.path.split(os.path.abspath(args.gguf))
    device = args.device if (args.device != "cuda" or torch.cuda.is_available()) else "cpu"

    report = {"positions": positions, "device": device}
    # Tokenizer: transformers builds a fast tokenizer from the GGUF metadata.
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        theirs = tok(meta["text"], add_special_tokens=False)["input_ids"]
        same = theirs == tokens
        first_diff = next((i for i, (a, b) in enumerate(zip(theirs, tokens)) if a != b), min(len(theirs), len(tokens)))
        report["tokenizer"] = {"kvlab_tokens": len(tokens), "hf_tokens": len(theirs), "identical": same,
                               "first_difference": None if same else first_diff}
        print(f"tokenizer: kvlab {len(tokens)} tokens, hf {len(theirs)} tokens, identical={same}"
              + ("" if same else f", first difference at {first_diff}"))
    except Exception as e:  # the logit comparison does not depend on it
        report["tokenizer"] = {"error": str(e)}
        print(f"tokenizer: comparison failed: {e}")

    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32,
                                                 attn_implementation="eager").to(device).eval()
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    ids = torch.tensor([tokens[:n_run]], dtype=torch.long, device=device)
    with torch.no_grad():
        logits = model(ids).logits[0].float().cpu().numpy()

    rows = []
    worst = 0.0
    agree = 0
    for i, p in enumerate(positions):
        a = ours[i].astype(np.float64)
        b = logits[p].astype(np.float64)
        rel = float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))
        top_a, top_b = int(np.argmax(a)), int(np.argmax(b))
        agree += top_a == top_b
        worst = max(worst, rel)
        rows.append({"position": p, "kvlab_top1": top_a, "hf_top1": top_b, "max_rel_error": rel})
        print(f"position {p:5d}: top-1 kvlab {top_a:6d} hf {top_b:6d} {'==' if top_a == top_b else '!='}  "
              f"max rel logit error {rel:.2e}")
    report["rows"] = rows
    report["top1_agreement"] = agree / len(positions)
    report["max_rel_error"] = worst
    print(f"top-1 agreement {agree}/{len(positions)}; max relative logit error {worst:.2e} "
          f"over positions up to {max(positions)}")
    if args.out:
        json.dump(report, open(args.out, "w"), indent=2)
    return 0 if agree == len(positions) else 1


if __name__ == "__main__":
    sys.exit(main())
