#!/usr/bin/env python3
"""Write weights_expected.json: sample dequantised values of SmolLM2-135M-Instruct.Q4_1.gguf.

The reference dequantisation is the `gguf` Python package's (gguf.quants.dequantize), an
implementation independent of ours. We record a few rows of tensors of each stored type
(Q8_0 token_embd, Q4_1 projections, F32 norms) as matrices with rows of dims[0].

Needs: pip install gguf numpy
Run:   python3 tests/data/model/make_weights_expected.py [model.gguf]
"""
import json
import os
import sys

import gguf
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
DEFAULT_MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")

# (tensor, row, first column, count)
SAMPLES = [
    ("token_embd.weight", 0, 0, 8),
    ("token_embd.weight", 19556, 100, 8),
    ("token_embd.weight", 49151, 568, 8),
    ("output_norm.weight", 0, 0, 8),
    ("blk.0.attn_q.weight", 5, 0, 8),
    ("blk.0.attn_k.weight", 191, 32, 8),
    ("blk.7.attn_v.weight", 64, 544, 8),
    ("blk.29.attn_output.weight", 575, 0, 8),
    ("blk.3.ffn_gate.weight", 1000, 200, 8),
    ("blk.3.ffn_up.weight", 1535, 0, 8),
    ("blk.12.ffn_down.weight", 17, 1500, 8),
    ("blk.29.ffn_norm.weight", 0, 560, 8),
]


def main():
    model_path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_MODEL
    reader = gguf.GGUFReader(model_path)
    tensors = {t.name: t for t in reader.tensors}
    samples = []
    for name, row, col, count in SAMPLES:
        t = tensors[name]
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        values = np.asarray(values, dtype=np.float32).reshape(-1, int(t.shape[0]))
        samples.append({
            "tensor": name, "type": t.tensor_type.name, "row": row, "col": col,
            "values": [float(v) for v in values[row, col:col + count]],
        })
    with open(os.path.join(HERE, "weights_expected.json"), "w", encoding="utf-8") as f:
        f.write('{"source": "gguf python package, gguf.quants.dequantize",\n "samples": [\n')
        f.write(",\n".join("  " + json.dumps(s) for s in samples))
        f.write("\n ]\n}\n")
    print(f"wrote {len(samples)} samples")


if __name__ == "__main__":
    main()
