#!/usr/bin/env bash
# kvlab_cuda_agreement's CPU-only half: --write-reference writes one complete file per prompt
# (no GPU needed), skips prompts already written, and refuses contradictory flags. The GPU half
# (--reference DIR) runs on the device; here only its refusal without a GPU is checked.
# Skips the model part (exit 0) when the model file is absent.
# usage: agreement_reference_test.sh PATH/TO/kvlab_cuda_agreement SOURCE_DIR
set -uo pipefail

tool="$1"
src="$2"
model="${KVLAB_MODEL:-${src}/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
work="$(mktemp -d "${TMPDIR:-/tmp}/kvlab_agreement_test.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
export OMP_WAIT_POLICY=passive
fail() { echo "FAIL: $*" >&2; exit 1; }

out=$("${tool}" --write-reference "${work}/a" --reference "${work}/b" 2>&1); rc=$?
[[ ${rc} -eq 2 && "${out}" == *"exclude each other"* ]] || fail "both reference flags: rc ${rc}: ${out}"
out=$("${tool}" --shard 3/2 2>&1); rc=$?
[[ ${rc} -eq 2 && "${out}" == *"--shard"* ]] || fail "bad shard: rc ${rc}: ${out}"

if [[ ! -f "${model}" ]]; then
  echo "agreement_reference_test: model absent (${model}); model part skipped (scripts/fetch-model.sh)"
  exit 0
fi
args=(--model "${model}" --contexts 300 --samples 2 --steps 2)
out=$("${tool}" "${args[@]}" --write-reference "${work}/ref" 2>&1) || fail "write: ${out}"
[[ "${out}" == *"TABLE reference niah_single ctx   300: 2 written, 0 already there"* ]] || fail "write table: ${out}"
for i in 0 1; do
  f="${work}/ref/ref_300_${i}.bin"
  [[ -f "${f}" ]] || fail "missing ${f}"
  [[ "$(head -c 8 "${f}")" == "KVAGREF1" ]] || fail "bad magic in ${f}"
  # header 8 + 6*8 bytes, 3 positions of int32 tokens, then 3 float16 rows of the vocabulary
  size=$(stat -c %s "${f}")
  (( (size - 56 - 12) % 6 == 0 && size > 56 + 12 + 6 * 1000 )) || fail "size ${size} of ${f}"
done
ls "${work}/ref" | grep -q '\.tmp$' && fail "temporary left behind"
# Prompts whose file exists are skipped (the run resumes).
out=$("${tool}" "${args[@]}" --write-reference "${work}/ref" 2>&1) || fail "rewrite: ${out}"
[[ "${out}" == *"0 written, 2 already there"* ]] || fail "resume: ${out}"
# The two files differ (two different prompts), and rerunning one reproduces it bit for bit.
cmp -s "${work}/ref/ref_300_0.bin" "${work}/ref/ref_300_1.bin" && fail "two prompts gave one file"
cp "${work}/ref/ref_300_1.bin" "${work}/keep.bin" && rm "${work}/ref/ref_300_1.bin"
out=$("${tool}" "${args[@]}" --write-reference "${work}/ref" --shard 1/2 2>&1) || fail "shard: ${out}"
[[ "${out}" == *"1 written, 0 already there"* ]] || fail "shard 1/2: ${out}"
cmp -s "${work}/ref/ref_300_1.bin" "${work}/keep.bin" || fail "the CPU reference is not reproducible"
echo "agreement_reference_test: OK"
