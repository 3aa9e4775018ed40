#!/usr/bin/env python3
"""Write a few small, valid GGUF v3 files as a libFuzzer seed corpus (stdlib only).

Usage: make_seeds.py OUT_DIR
"""
import os
import struct
import sys

U32, I32, F32, BOOL, STRING, ARRAY = 4, 5, 6, 7, 8, 9


def string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype, payload):
    return string(key) + struct.pack("<I", vtype) + payload


def gguf(kvs, tensors, alignment=32):
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs)
    data, infos = b"", b""
    for name, dims, ggml_type, blob in tensors:
        infos += string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", ggml_type, len(data))
        data += blob + b"\0" * (-len(blob) % alignment)
    out += infos
    out += b"\0" * (-len(out) % alignment)
    return out + data


def strings(items):
    return struct.pack("<IQ", STRING, len(items)) + b"".join(string(s) for s in items)


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    # Byte-level vocab: printable ASCII only (enough for the seeds), plus a merge and a special.
    tokens = [chr(c) for c in range(33, 127)] + ["he", "<|im_start|>"]
    types = [1] * (len(tokens) - 1) + [3]
    tokenizer_kvs = [
        kv("tokenizer.ggml.model", STRING, string("gpt2")),
        kv("tokenizer.ggml.pre", STRING, string("smollm")),
        kv("tokenizer.ggml.tokens", ARRAY, strings(tokens)),
        kv("tokenizer.ggml.merges", ARRAY, strings(["h e"])),
        kv("tokenizer.ggml.token_type", ARRAY, struct.pack("<IQ", I32, len(types)) +
           b"".join(struct.pack("<i", t) for t in types)),
        kv("tokenizer.ggml.bos_token_id", U32, struct.pack("<I", 1)),
    ]
    llama_kvs = [
        kv("general.architecture", STRING, string("llama")),
        kv("llama.block_count", U32, struct.pack("<I", 1)),
        kv("llama.embedding_length", U32, struct.pack("<I", 32)),
        kv("llama.attention.head_count", U32, struct.pack("<I", 2)),
        kv("llama.feed_forward_length", U32, struct.pack("<I", 64)),
        kv("llama.context_length", U32, struct.pack("<I", 128)),
        kv("llama.attention.layer_norm_rms_epsilon", F32, struct.pack("<f", 1e-5)),
        kv("general.flag", BOOL, b"\x01"),
    ]
    f32 = struct.pack("<8f", *[float(i) for i in range(8)])
    q8_0 = struct.pack("<H", 0x3800) + bytes(range(32))
    q4_0 = struct.pack("<H", 0x4000) + bytes(range(16))
    q4_1 = struct.pack("<HH", 0x3400, 0xBC00) + bytes(range(16))
    f16 = struct.pack("<4H", 0x3C00, 0xC000, 0x7C00, 0x0001)
    seeds = {
        "empty_kv.gguf": gguf([], []),
        "tokenizer.gguf": gguf(tokenizer_kvs, []),
        "llama_meta.gguf": gguf(llama_kvs, [("output_norm.weight", [8], 0, f32)]),
        "quant_tensors.gguf": gguf(
            [kv("general.alignment", U32, struct.pack("<I", 64))],
            [("a", [32], 8, q8_0), ("b", [32], 2, q4_0), ("c", [32], 3, q4_1), ("d", [4], 1, f16),
             ("e", [2, 4], 0, f32)], alignment=64),
        "nested.gguf": gguf([kv("n", ARRAY, struct.pack("<IQ", ARRAY, 1) + strings(["x", "yz"]))], []),
    }
    for name, blob in seeds.items():
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(blob)
    print(f"wrote {len(seeds)} seeds to {out_dir}")


if __name__ == "__main__":
    main()
