# Sourced by the live GPU scripts (live_cuda.sh, live_table.sh): the tree they sit in (a
# checkout, or a carried copy holding build/, tests/cli/, traces/data/ and experiments/gpu/),
# its binaries and libraries, and the model, looked for in $KVLAB_MODEL, ./models, then the
# tree's models/. Sets root, bin, K and model; exports LD_LIBRARY_PATH and OMP_WAIT_POLICY.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="${KVLAB_BIN:-$root/build/bin}"
K="$bin/kvlab"
gguf=SmolLM2-135M-Instruct.Q4_1.gguf
model="${KVLAB_MODEL:-}"
for candidate in "$PWD/models/$gguf" "$root/models/$gguf"; do
  [[ -z "$model" && -f "$candidate" ]] && model="$candidate"
done
model="${model:-$PWD/models/$gguf}"
export LD_LIBRARY_PATH="$root/build/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OMP_WAIT_POLICY=passive
export KVLAB_SOURCE_DIR="${KVLAB_SOURCE_DIR:-$root}"  # for gpu tests that read traces/data
