#!/usr/bin/env bash
# experiments/lsa/real/prompt_prior.sh end to end at a tiny size on the CPU (one task, one 2K
# request): it records, replays the prompt prior beside the ceilings and the zoo, and tabulates;
# a missing indexer is one line and exit 1. The run skips itself (exit 0) without the model.
# usage: lsa_real_scripts_test.sh KVLAB SOURCE_DIR
set -uo pipefail
kvlab="$1"
src="$2"
model="${KVLAB_MODEL:-${src}/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
work="$(mktemp -d "${TMPDIR:-/tmp}/kvlab_lsa_real_scripts.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
failures=0
fail() { failures=$((failures + 1)); echo "FAIL: $*"; }
export KVLAB_BIN="$(dirname "${kvlab}")" KVLAB_MODEL="${model}"
script="${src}/experiments/lsa/real/prompt_prior.sh"

INDEXER="${work}/absent.h5" WORK="${work}/w0" bash "${script}" "${work}/o0" >"${work}/e0.txt" 2>&1
rc=$?
[[ ${rc} == 1 && $(wc -l <"${work}/e0.txt") == 1 ]] && grep -q "INDEXER ${work}/absent.h5 missing" "${work}/e0.txt" ||
  fail "a missing indexer: rc ${rc}, $(cat "${work}/e0.txt")"

if [[ ! -f "${model}" ]]; then
  echo "lsa_real_scripts_test: SKIP the run: ${model} absent (scripts/fetch-model.sh)"
  exit $((failures > 0))
fi
TASKS=niah_multikey CONTEXT=2048 SAMPLES=1 STEPS=8 BUDGET=0.3 ZOO_BUDGET=0.25 SHARES="0.5 1" THREADS=2 \
  WORK="${work}/w" bash "${script}" "${work}/out" >"${work}/run.txt" 2>&1 || fail "the run: $(tail -n 3 "${work}/run.txt")"
python3 - "${work}/out/summary.md" <<'PY' || fail "the summary: $(head -c 600 "${work}/out/summary.md")"
import sys
text = open(sys.argv[1]).read()
tables = [t for t in text.split("**") if t.strip().startswith("|")]
assert len(tables) == 3, f"{len(tables)} tables"
header = [c.strip() for c in tables[0].strip().splitlines()[0].strip("|").split("|")]
want = ["task", "sliding_window", "snapkv", "pyramidkv", "h2o", "oracle_topk", "lsa_oracle per layer τ=1",
        "lsa_oracle per layer", "lsa_oracle", "lsa_oracle prior 0.5", "lsa", "lsa prior 0.5", "lsa prior 1"]
assert header == want, header
for table in tables:
    for line in table.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] in ("niah_multikey", "mean"), cells
        values = [float(v) for v in cells[1:]]
        assert len(values) == len(want) - 1 and all(0.0 < v <= 1.0 for v in values), cells
PY
exit $((failures > 0))
