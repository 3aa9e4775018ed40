#!/usr/bin/env python3
"""Read every object of an HDF5 file with h5py, as a second opinion on a fuzz input.

Usage: h5py_walk.py FILE

Opens FILE, visits every group and dataset, reads every attribute (also, by name, those kvlab
reads) and every dataset of at most 2^24 elements. Exits 0 when all of it reads, 1 when h5py refuses the file with an exception (a
clean error). A hang (the caller's timeout) or a death by signal means libhdf5 itself fails on
the file, whatever kvlab does with it: tests/fuzz/fuzz_smoke.sh counts such inputs as known
libhdf5 faults instead of failing (tests/fuzz/README.md).
"""
import sys

import h5py

MAX_ELEMENTS = 1 << 24

# The attributes kvlab reads by name (traces/trace_format.hpp, traces/checkpoint.cpp). Reading
# them by name is a different libhdf5 path from iterating the attributes (H5Aread through the
# global heap for variable-length strings against H5Aiterate): a damaged file can make the one
# hang while the other refuses cleanly, so the second opinion reads them the way kvlab does.
KVLAB_ATTRIBUTES = (
    "kvlab_trace_version", "model", "n_layers", "n_kv_heads", "head_dim", "kv_dtype_bytes", "chunk_tokens",
    "prompt_tokens", "decode_steps", "workload", "seed", "template_set", "template_variants", "mass_storage",
    "n_heads_stored", "prefill_window",
    "kvlab_checkpoint_version", "kind", "config_json", "metrics_json", "provenance_json",
)


def read_attributes(obj):
    refusal = None
    try:
        for name in obj.attrs:
            obj.attrs[name]
    except Exception as error:  # noqa: BLE001 - remembered; kvlab's own names are still read
        refusal = error
    for name in KVLAB_ATTRIBUTES:
        try:
            obj.attrs.get(name)
        except Exception as error:  # noqa: BLE001
            refusal = refusal or error
    if refusal is not None:
        raise refusal


def visit(name, obj):
    read_attributes(obj)
    if isinstance(obj, h5py.Dataset) and obj.size <= MAX_ELEMENTS:
        obj[()]


def main():
    try:
        with h5py.File(sys.argv[1], "r") as f:
            read_attributes(f)
            f.visititems(visit)
    except Exception as error:  # noqa: BLE001 - any refusal by h5py is a clean one
        print(f"h5py refuses {sys.argv[1]}: {type(error).__name__}: {error}".splitlines()[0])
        return 1
    print(f"h5py reads {sys.argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
