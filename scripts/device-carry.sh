#!/usr/bin/env bash
# Packs what a device call carries (the device machine builds nothing: it has no HDF5 or Eigen
# headers): the GPU-side binaries built here, libkvlab_core, and the parts of the committed
# tree the device scripts read, as one xz tarball (~9 MB: the binaries' CUDA fatbins compress
# well) in an ignored folder of the checkout the device tool copies.
#
#   scripts/device-carry.sh [DEST]        (DEST defaults to .carry/pack/kvlab.tar.xz; BUILD_DIR=build)
#   BINS="kvlab kvlab_cuda_agreement" scripts/device-carry.sh DEST
#                                         a lighter pack (~6 MB) that fits one call beside the
#                                         model's first piece, for visits that only run the model
#
# In the device call: carry [".carry/pack"], then
#   mkdir -p /tmp/kv && tar xJf .carry/pack/kvlab.tar.xz -C /tmp/kv && cd /tmp/kv && scripts/device-check.sh --only tests
# /tmp/kv stays while the machine is warm. The binaries find libkvlab_core through
# LD_LIBRARY_PATH (the scripts set it). The model (98 MB) does not fit one call's 64 MiB beside
# this: scripts/device-model.sh splits it for three calls.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dest="${1:-.carry/pack/kvlab.tar.xz}"
build="${BUILD_DIR:-build}"
read -r -a bins <<<"${BINS:-kvlab kvlab_gpu_tests kvlab_cuda_agreement kvlab_cuda_decoder_bench kvlab_kernel_bench kvlab_fetch_bench}"
for b in "${bins[@]}"; do
  [[ -x "$build/bin/$b" ]] || { echo "device-carry: $build/bin/$b missing (cmake --build $build)" >&2; exit 1; }
done
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/build/bin" "$stage/build/lib" "$(dirname "$dest")"
for b in "${bins[@]}"; do strip -o "$stage/build/bin/$b" "$build/bin/$b"; done
cp -L "$build/lib/libkvlab_core.so.0" "$stage/build/lib/libkvlab_core.so.0"
# The committed results of earlier visits stay behind (no visit reads them; they would push the
# pack past what fits beside a piece of the model); the indexers under experiments/lsa/real/results
# travel, since live runs use them.
git archive HEAD scripts experiments/gpu experiments/lsa experiments/live experiments/fidelity analysis tests/cli traces/data \
  ':(exclude)experiments/gpu/results' ':(exclude)experiments/lsa/results' |
  tar -x -C "$stage"
git rev-parse HEAD >"$stage/REVISION"
tar cJf "$dest.tmp" -C "$stage" .
mv "$dest.tmp" "$dest"
echo "device-carry: $dest, $(stat -c %s "$dest") bytes, at $(git rev-parse --short HEAD)"
