#!/usr/bin/env python3
"""Write tokenizer_expected.json: reference token ids for tokenizer_corpus.txt.

The reference is Hugging Face `tokenizers` (an independent Rust implementation of byte-level
BPE), built from the same GGUF's vocabulary and merges with the pre-tokenizer that SmolLM2's
tokenizer.json declares: Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=
False, use_regex=True)], and its special tokens (GGUF token type CONTROL) added as special.

Each corpus line is one case; the escapes \\n, \\t, \\r and \\\\ stand for newline, tab,
carriage return and backslash. One extra case is the whole corpus file as it is on disk.

Needs: pip install gguf tokenizers
Run:   python3 tests/data/model/make_tokenizer_expected.py [model.gguf]
"""
import json
import os
import sys

import gguf
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
DEFAULT_MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
CONTROL = 3


def unescape(line):
    out, i = [], 0
    while i < len(line):
        if line[i] == "\\" and i + 1 < len(line) and line[i + 1] in "ntr\\":
            out.append({"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}[line[i + 1]])
            i += 2
        else:
            out.append(line[i])
            i += 1
    return "".join(out)


def build_reference(model_path):
    reader = gguf.GGUFReader(model_path)
    field = lambda key: reader.fields[key].contents()
    assert field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.pre") == "smollm"
    tokens = field("tokenizer.ggml.tokens")
    types = field("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges")]
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = [t for t, ty in zip(tokens, types) if ty == CONTROL]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok


def main():
    model_path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_MODEL
    tok = build_reference(model_path)
    corpus_path = os.path.join(HERE, "tokenizer_corpus.txt")
    with open(corpus_path, encoding="utf-8") as f:
        raw = f.read()
    texts = [unescape(line) for line in raw.split("\n")[:-1]] + [raw]
    cases = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        cases.append({"text": text, "ids": ids,
                      "decoded": tok.decode(ids, skip_special_tokens=False)})
    out = {
        "source": "HF tokenizers " + __import__("tokenizers").__version__ +
                  " built from SmolLM2-135M-Instruct.Q4_1.gguf vocab and merges",
        "cases": cases,
    }
    # One case per line keeps diffs readable.
    with open(os.path.join(HERE, "tokenizer_expected.json"), "w", encoding="utf-8") as f:
        f.write('{"source": ' + json.dumps(out["source"]) + ',\n "cases": [\n')
        f.write(",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cases))
        f.write("\n ]\n}\n")
    print(f"wrote {len(cases)} cases, {sum(len(c['ids']) for c in cases)} ids")


if __name__ == "__main__":
    main()
