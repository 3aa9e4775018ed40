#!/usr/bin/env bash
# Builds the FlashInfer peer benchmark against a checkout of FlashInfer's public headers.
#   experiments/gpu/peers/build_flashinfer_bench.sh FLASHINFER_INCLUDE_DIR OUT_BINARY
# FLASHINFER_INCLUDE_DIR is the folder holding flashinfer/ (a FlashInfer checkout's include/).
# Nothing of FlashInfer is committed to kvlab; keep the checkout in an ignored folder. Measured with
# FlashInfer f00ce3603 (2026-04-22), the last revision that builds against CUDA 13.0's own CCCL
# (later ones vendor CCCL 3.3 for cuda::fast_mod_div).
set -euo pipefail
inc="${1:?usage: build_flashinfer_bench.sh FLASHINFER_INCLUDE_DIR OUT_BINARY}"
out="${2:?usage: build_flashinfer_bench.sh FLASHINFER_INCLUDE_DIR OUT_BINARY}"
[[ -f "$inc/flashinfer/attention/decode.cuh" ]] || { echo "build_flashinfer_bench: no flashinfer/attention/decode.cuh under $inc" >&2; exit 2; }
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
nvcc -O3 -std=c++17 -arch=sm_90 --expt-relaxed-constexpr -I"$inc" -o "$out" "$here/flashinfer_decode_bench.cu"
