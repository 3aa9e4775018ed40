#!/usr/bin/env bash
# Writes the seed corpora of the trace and checkpoint fuzz targets: small valid traces (dense and
# sparse, from kvlab's writer and from plain h5py) and indexer checkpoints (linear and MLP).
# The committed corpora in tests/fuzz/corpus/ were made with it; the CI smoke fuzzes those
# (so a change to kvlab's writer does not change what CI fuzzes). Rerun it when the format
# changes, and commit the result.
# Usage: tests/fuzz/make_hdf5_seeds.sh KVLAB PYTHON OUT_DIR   (writes OUT_DIR/trace, OUT_DIR/checkpoint)
set -euo pipefail

kvlab="$1"
python="$2"
out="$3"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
mkdir -p "${out}/trace" "${out}/checkpoint"

gen=(trace gen --context-tokens 192 --steps 4 --chunk-tokens 32 --d-query 4 --d-key 4 --requests 1)
"${kvlab}" "${gen[@]}" --storage dense --out "${out}/trace/dense.h5" >/dev/null
"${kvlab}" "${gen[@]}" --storage sparse --heads per-head --out "${out}/trace/sparse.h5" >/dev/null
"${python}" "${root}/tests/cli/craft_traces.py" "${work}/crafted" >/dev/null
cp "${work}/crafted/minimal_dense.h5" "${work}/crafted/minimal_sparse.h5" "${work}/crafted/unsorted_row.h5" \
  "${out}/trace/"

"${kvlab}" trace gen --workload needle --context-tokens 2048 --steps 40 --d-query 4 --d-key 4 \
  --out "${work}/train.h5" >/dev/null
train=(indexer train --traces "${work}/train.h5" --window 512 --tau 16 --stride 8 --dim 4 --epochs 1 --threads 1)
"${kvlab}" "${train[@]}" --depth 0 --out "${out}/checkpoint/linear.h5" >/dev/null 2>&1
"${kvlab}" "${train[@]}" --depth 1 --width 4 --out "${out}/checkpoint/mlp.h5" >/dev/null 2>&1
ls -l "${out}/trace" "${out}/checkpoint"
