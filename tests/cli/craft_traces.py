#!/usr/bin/env python3
"""Writes kvlab traces with plain h5py, not with kvlab's writer: two minimal valid traces that
follow only the required content of traces/FORMAT.md, and crafted bad ones, each breaking one
rule. tests/cli/hardening_test.sh runs kvlab on every file and checks its exit code and message.

Usage: craft_traces.py OUT_DIR
"""
import os
import sys

import h5py
import numpy as np

# Geometry of every file: 2 layers, 2 KV heads, 4-token chunks; one request, prompt 6, 3 steps.
LAYERS, KV_HEADS, CHUNK = 2, 2, 4
PROMPT, STEPS = 6, 3


def exist(t):
    """Chunks that exist at decode step t."""
    return -(-(PROMPT + t + 1) // CHUNK)


N_CHUNKS_MAX = exist(STEPS - 1)


def root(f, **override):
    attrs = dict(kvlab_trace_version=1, model="h5py-test", n_layers=LAYERS, n_kv_heads=KV_HEADS, head_dim=8,
                 kv_dtype_bytes=2, chunk_tokens=CHUNK)
    attrs.update(override)
    for key, value in attrs.items():
        f.attrs[key] = value
    return f.create_group("requests")


def request(requests, name="r0", **override):
    g = requests.create_group(name)
    attrs = dict(prompt_tokens=PROMPT, decode_steps=STEPS, workload="h5py", seed=np.uint64(5))
    attrs.update(override)
    for key, value in attrs.items():
        g.attrs[key] = value
    return g


def dense_mass(heads):
    """Uniform rows over the chunks that exist, [steps, layers, heads, n_chunks_max]."""
    mass = np.zeros((STEPS, LAYERS, heads, N_CHUNKS_MAX), np.float32)
    for t in range(STEPS):
        mass[t, :, :, :exist(t)] = 1.0 / exist(t)
    return mass


def sparse_mass(heads, index_dtype=np.int64):
    """Every row lists its newest chunk (0.6) then chunk 0 (0.3), remainder 0.1."""
    indptr, index, value, remainder = [0], [], [], []
    for t in range(STEPS):
        for _ in range(LAYERS * heads):
            index += [exist(t) - 1, 0]
            value += [0.6, 0.3]
            remainder.append(0.1)
            indptr.append(len(index))
    return (np.array(indptr, np.int64), np.array(index, index_dtype), np.array(value, np.float32),
            np.array(remainder, np.float32))


def write_sparse(g, heads, index_dtype=np.int64, edit=None):
    indptr, index, value, remainder = sparse_mass(heads, index_dtype)
    if edit:
        edit(indptr, index, value, remainder)
    g["mass_indptr"], g["mass_index"], g["mass_value"], g["mass_remainder"] = indptr, index, value, remainder


def features(g, query_edit=None, key_edit=None):
    query = np.ones((STEPS, 4), np.float32)
    keys = np.ones((N_CHUNKS_MAX, 3), np.float32)
    if query_edit:
        query_edit(query)
    if key_edit:
        key_edit(keys)
    g["query"], g["chunk_features"] = query, keys


def make(out_dir, name, build):
    with h5py.File(os.path.join(out_dir, name + ".h5"), "w") as f:
        build(f)


def minimal_dense(f):
    # No mass_storage, no n_heads_stored: per-head storage follows from mass's shape.
    request(root(f))["mass"] = dense_mass(KV_HEADS)


def minimal_sparse(f):
    # Heads aggregated (mass_indptr has steps * layers * 1 + 1 entries), int64 indices.
    write_sparse(request(root(f)), 1)


def geometry_65536(f):
    requests = root(f, n_layers=65536, n_kv_heads=65536)
    g = request(requests, decode_steps=1, n_heads_stored=65536, mass_storage="sparse")
    g["mass_indptr"] = np.zeros(1, np.int64)  # wrong length, but the geometry is refused first
    g["mass_index"], g["mass_value"] = np.zeros(0, np.uint32), np.zeros(0, np.float32)
    g["mass_remainder"] = np.zeros(0, np.float32)


def layers_2_40(f):
    root(f, n_layers=2**40)


def layers_uint64_max(f):
    root(f, n_layers=np.uint64(2**64 - 1))


def bytes_per_token_overflow(f):
    root(f, n_layers=4096, n_kv_heads=4096, head_dim=4096)


def empty_trace(f):
    root(f)


def nan_query(f):
    g = request(root(f))
    g["mass"] = dense_mass(1)
    features(g, query_edit=lambda q: q.__setitem__((1, 2), np.nan))


def inf_chunk_features(f):
    g = request(root(f))
    g["mass"] = dense_mass(1)
    features(g, key_edit=lambda k: k.__setitem__((2, 1), np.inf))


def negative_index(f):
    def edit(indptr, index, value, remainder):
        index[3] = -1  # step 0, row 1, second entry
    write_sparse(request(root(f)), 1, np.int64, edit)


def unsorted_row(f):
    def edit(indptr, index, value, remainder):
        value[6], value[7] = 0.3, 0.6  # step 1, row 1 lists 0.3 before 0.6
    write_sparse(request(root(f)), 1, np.int64, edit)


def huge_sparse_prompt(f):
    # A valid 2^34-token prompt in 16-token chunks: 2^30 chunks, none of them listed.
    requests = root(f, chunk_tokens=16)
    g = request(requests, prompt_tokens=2**34, decode_steps=1)
    g["mass_indptr"] = np.array([0, 0, 0], np.int64)
    g["mass_index"], g["mass_value"] = np.zeros(0, np.uint32), np.zeros(0, np.float32)
    g["mass_remainder"] = np.ones(2, np.float32)


def huge_unwritten_dense(f):
    # 2^31 chunks per row declared, none written: a few KB on disk.
    requests = root(f, chunk_tokens=1)
    g = request(requests, prompt_tokens=2**31, decode_steps=1)
    g.create_dataset("mass", shape=(1, LAYERS, 1, 2**31 + 1), dtype=np.float16, chunks=(1, 1, 1, 2**16))


def newline_in_names(f):
    g = request(root(f), name="bad\nid", mass_storage="dense\nor not")
    g["mass"] = dense_mass(1)


def storage_ambiguous(f):
    g = request(root(f))
    g["mass"] = dense_mass(1)
    write_sparse(g, 1)


CASES = [minimal_dense, minimal_sparse, geometry_65536, layers_2_40, layers_uint64_max, bytes_per_token_overflow,
         empty_trace, nan_query, inf_chunk_features, negative_index, unsorted_row, huge_sparse_prompt,
         huge_unwritten_dense, newline_in_names, storage_ambiguous]


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    for build in CASES:
        make(out_dir, build.__name__, build)


if __name__ == "__main__":
    main()
