#!/usr/bin/env bash
# The layer order of the source tree: no folder includes a folder above it.
#   core < traces < indexer/inference < policies < indexer/training < backends < experiments,
#   analysis, bench < cli
# Each folder lists the folders its #include "..." lines may name. policies/ may use a trained
# indexer (indexer/inference/) but never the trainer (indexer/training/); core/ and traces/
# know nothing of indexers or policies. Tests and examples are outside the order.
# Usage: scripts/check-layers.sh [SOURCE_DIR]; prints every violation, exit code 1 if any.
set -euo pipefail
root="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"

lower_than_backends="core traces indexer/inference policies indexer/training"
declare -A allowed=(
  [core]="core"
  [traces]="core traces"
  [indexer/inference]="core traces indexer/inference"
  [policies]="core traces indexer/inference policies"
  [indexer/training]="core traces indexer/inference indexer/training"
  [backends]="${lower_than_backends} backends"
  [experiments]="${lower_than_backends} backends experiments analysis"
  [analysis]="${lower_than_backends} backends experiments analysis"
  [bench]="${lower_than_backends} backends experiments analysis bench"
)
# Every project folder a quoted include can name (longest first, so indexer/training wins over
# a shorter prefix).
known="indexer/inference indexer/training core traces policies backends experiments analysis bench cli"

folder_of_include() {
  local path="$1" k
  for k in ${known}; do
    if [[ "${path}" == "${k}/"* ]]; then
      echo "${k}"
      return
    fi
  done
  [[ "${path}" == indexer/* ]] && echo "indexer" && return  # a folder that must not exist
  echo ""
}

violations=0
for folder in "${!allowed[@]}"; do
  [[ -d "${root}/${folder}" ]] || continue
  while IFS= read -r line; do
    file="${line%%:*}"
    rest="${line#*:}"
    rest="${rest#*:}"
    include="$(sed -E 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"([^"]+)".*/\1/' <<<"${rest}")"
    target="$(folder_of_include "${include}")"
    [[ -z "${target}" ]] && continue  # a header of the same folder by relative name, or a generated one
    ok=0
    for a in ${allowed[${folder}]}; do [[ "${target}" == "${a}" ]] && ok=1; done
    if [[ ${ok} == 0 ]]; then
      echo "${file#"${root}/"}: includes \"${include}\" (${folder}/ may include only: ${allowed[${folder}]})"
      violations=$((violations + 1))
    fi
  done < <(grep -rnE '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "${root}/${folder}" \
             --include='*.cpp' --include='*.hpp' --include='*.h' --include='*.cu' --include='*.cuh' || true)
done
if [[ ${violations} -gt 0 ]]; then
  echo "check-layers: ${violations} include(s) break the layer order"
  exit 1
fi
echo "check-layers: the layer order holds"
