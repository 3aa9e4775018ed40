#!/usr/bin/env bash
# The layer order (scripts/check-layers.sh) holds for the tree, and the check does catch the
# includes it exists to forbid: core/ or traces/ naming an indexer, policies/ naming the trainer.
set -euo pipefail
source_dir="$1"
check="${source_dir}/scripts/check-layers.sh"
fail() { echo "FAIL: $*" >&2; exit 1; }

bash "${check}" "${source_dir}" || fail "the source tree breaks the layer order (see above)"

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
mkdir -p "${work}/core" "${work}/traces" "${work}/policies" "${work}/indexer/training" "${work}/backends"
printf '#include "core/plan.hpp"\n' >"${work}/core/fine.hpp"
printf '#include "core/plan.hpp"\n#include "traces/trace.hpp"\n' >"${work}/backends/fine.cpp"
bash "${check}" "${work}" >"${work}/out.txt" || fail "a clean tree is reported: $(cat "${work}/out.txt")"

printf '#include "indexer/inference/dual_encoder.hpp"\n' >"${work}/core/bad.hpp"
printf '  #  include "indexer/training/trainer.hpp"\n' >"${work}/traces/bad.cpp"
printf '#include "indexer/training/trainer.hpp"\n' >"${work}/policies/bad.cpp"
printf '#include "policies/lsa.hpp"\n' >"${work}/indexer/training/bad.cpp"
printf '#include "cli/args.hpp"\n' >"${work}/backends/bad.cpp"
if bash "${check}" "${work}" >"${work}/out.txt"; then fail "violations were not caught"; fi
for f in core/bad.hpp traces/bad.cpp policies/bad.cpp indexer/training/bad.cpp backends/bad.cpp; do
  grep -q "^${f}: includes" "${work}/out.txt" || fail "${f} not reported: $(cat "${work}/out.txt")"
done
grep -q "5 include(s) break the layer order" "${work}/out.txt" || fail "wrong count: $(cat "${work}/out.txt")"
grep -q "fine" "${work}/out.txt" && fail "a permitted include was reported"
echo "PASS layering"
