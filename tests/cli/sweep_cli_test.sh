#!/usr/bin/env bash
# kvlab sweep: config errors before anything runs, --dry-run, skipping finished cells, resume
# after SIGKILL at random moments (results identical to an uninterrupted run, no finished cell
# computed twice), --shard and SLURM_ARRAY_TASK_* shares, --merge, and MPI dispatch under
# `mpirun -n 2 --oversubscribe` when kvlab was built with MPI and mpirun is present.
# usage: sweep_cli_test.sh PATH/TO/kvlab HAVE_MPI(ON|OFF) [SOURCE_DIR]
set -uo pipefail

kvlab="$1"
have_mpi="${2:-OFF}"
source_dir="${3:-}"
work="$(mktemp -d "${TMPDIR:-/tmp}/kvlab_sweep_cli_test.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/expect_lib.sh"

# study OUT: a 2-source x 7-policy x 2-seed study (28 cells of ~0.1 s) with one artifact.
study() {
  cat <<TOML
out_dir = "$1"
seeds = [0, 1]

[engine]
threads = 1

[artifact.mix]
command = ["trace", "gen", "--workload", "mix", "--context-tokens", "16384", "--steps", "48", "--requests", "2", "--seed", "3"]

[[source]]
traces = ["@mix"]
name = "mix_16k"

[[source]]
traces = ["${work}/needle.h5"]

[[policy]]
name = "full"

[[policy]]
name = "sliding_window"
window = [1024, 2048]
sinks = 64

[[policy]]
name = "random"
budget = [0.1, 0.2]

[[policy]]
name = "oracle_topk"
budget = [0.1, 0.2]
TOML
}
expect 0 "wrote" -- trace gen --workload needle --context-tokens 16384 --steps 48 --requests 2 --seed 4 \
  --out "${work}/needle.h5"
study "${work}/ref" > "${work}/ref.toml"

# ---- bad configs: refused before anything runs, with file, line and key ---------------------
sed 's/^seeds = \[0, 1\]/seed = [0]/' "${work}/ref.toml" > "${work}/bad.toml"
expect 1 "bad.toml:2: seed: unknown key" -- sweep --config "${work}/bad.toml"
sed 's/^threads = 1/threads = "1"/' "${work}/ref.toml" > "${work}/bad.toml"
expect 1 "bad.toml:5: engine.threads: expected an integer" -- sweep --config "${work}/bad.toml"
sed 's/needle.h5/needle_*.h5/' "${work}/ref.toml" > "${work}/bad.toml"
expect 1 "bad.toml:15: source.traces: '${work}/needle_*.h5' matches no file" -- sweep --config "${work}/bad.toml"
sed 's/name = "random"/name = "randm"/' "${work}/ref.toml" > "${work}/bad.toml"
expect 1 "bad.toml:25: policy randm: unknown policy 'randm'" -- sweep --config "${work}/bad.toml"
sed 's/^budget = \[0.1, 0.2\]/budgt = [0.1, 0.2]/' "${work}/ref.toml" > "${work}/bad.toml"
expect 1 "bad.toml:25: policy random: unknown parameter 'budgt'" -- sweep --config "${work}/bad.toml"
[[ ! -e "${work}/ref" ]] || fail "a refused config created its output folder"
expect 2 "--shard" -- sweep --config "${work}/ref.toml" --shard 2/2
expect 2 "--mpi" -- sweep --config "${work}/ref.toml" --mpi maybe
expect 1 "nothing.toml: cannot read" -- sweep --config "${work}/nothing.toml"
# Live sources take kvlab run's --backend, --batch and --cuda-graphs; replay sources refuse them.
cat > "${work}/live.toml" <<EOF
out_dir = "${work}/live_out"
[[source]]
task = "niah_single"
backend = "cuda"
batch = 8
cuda_graphs = true
[[policy]]
name = "full"
EOF
expect 0 "1 cell(s), 0 done, 1 to run" -- sweep --config "${work}/live.toml" --dry-run
sed "s|^task = \"niah_single\"|traces = [\"${work}/needle.h5\"]|" "${work}/live.toml" > "${work}/bad.toml"
expect 1 "source.backend: only live sources (task = ...) take it" -- sweep --config "${work}/bad.toml"
# The GPU decoder's keys are checked before anything runs, as kvlab run would check them per cell.
sed 's/^backend = "cuda"/backend = "cdua"/' "${work}/live.toml" > "${work}/bad.toml"
expect 1 "bad.toml:4: source.backend: 'cdua' is not one of cpu, cuda" -- sweep --config "${work}/bad.toml"
sed 's/^backend = "cuda"/backend = "cpu"/' "${work}/live.toml" > "${work}/bad.toml"
expect 1 "bad.toml:6: source.cuda_graphs: needs backend = \"cuda\"" -- sweep --config "${work}/bad.toml"
sed 's/^cuda_graphs = true/cuda_prefill = "fp16"/' "${work}/live.toml" > "${work}/bad.toml"
expect 1 "bad.toml:6: source.cuda_prefill: 'fp16' is not one of tensor, float32" -- sweep --config "${work}/bad.toml"
# A GPU study on a machine (or build) without a GPU stops before any artifact or cell, naming the source.
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  echo "skip: a GPU is present (the no-GPU refusal of a backend = \"cuda\" study)"
else
  printf '[artifact.t]\ncommand = ["trace", "gen", "--workload", "mix", "--context-tokens", "4096", "--steps", "8"]\n' \
    >> "${work}/live.toml"
  expect 1 "live.toml:2: source niah_single: --backend cuda: " -- sweep --config "${work}/live.toml"
  checks=$((checks + 1))
  [[ ! -e "${work}/live_out" ]] || fail "a GPU study without a GPU built artifacts or ran cells"
fi

# ---- dry run, then the uninterrupted reference run ----------------------------------------
expect 0 "28 cell(s), 0 done, 28 to run" -- sweep --config "${work}/ref.toml" --dry-run
expect 0 "28 cell(s) done" -- sweep --config "${work}/ref.toml"
expect 0 "28 cell(s), 28 done, 0 to run" -- sweep --config "${work}/ref.toml" --dry-run
json_check "${work}/ref/results.json" 'len(d) == 28 and sum(r["oracle"] for r in d) == 8'
json_check "${work}/ref/results.json" 'all(r["cell"] and r["source"] in ("mix_16k", "needle") for r in d)'
cell=$(ls "${work}/ref/cells" | head -1)
json_check "${work}/ref/cells/${cell}/config.json" 'd["cell_hash"] == "'"${cell}"'" and d["git_revision"]'
# A finished sweep computes nothing again.
stamp_before=$(stat -c %Y.%i "${work}/ref/cells/${cell}/cell.json")
expect 0 "28 already done, 0 to run" -- sweep --config "${work}/ref.toml"
[[ "$(stat -c %Y.%i "${work}/ref/cells/${cell}/cell.json")" == "${stamp_before}" ]] || fail "a done cell was rewritten"
# Every cell gives the numbers of the same run made directly with kvlab replay.
checks=$((checks + 1))
python3 - "${work}/ref/cells" "${kvlab}" <<'PY' || fail "a cell differs from kvlab replay of the same run"
import json, os, subprocess, sys
for h in sorted(os.listdir(sys.argv[1])):
    d = os.path.join(sys.argv[1], h)
    c = json.load(open(os.path.join(d, "config.json")))
    direct = json.loads(subprocess.run([sys.argv[2], "replay", "--trace", c["trace"]["path"], "--policy",
                                        c["policies"][0]["spec"], "--seed", str(c["engine"]["seed"]), "--threads", "1",
                                        "--json"], check=True, capture_output=True).stdout)
    assert direct == json.load(open(os.path.join(d, "results.json"))), d
PY

# ---- kill and resume: SIGKILL at random moments until the sweep completes ------------------
study "${work}/killed" > "${work}/killed.toml"
declare -A finished=()  # cell -> cell.json inode and mtime when first seen done
kills=0
for attempt in $(seq 1 60); do
  "${kvlab}" sweep --config "${work}/killed.toml" >/dev/null 2>"${work}/kill_err.txt" &
  pid=$!
  sleep "$(python3 -c "import random; print(random.uniform(0.02, 0.6))")"
  if kill -0 "${pid}" 2>/dev/null; then
    kill -KILL "${pid}" 2>/dev/null && kills=$((kills + 1))
  fi
  wait "${pid}" 2>/dev/null
  rc=$?
  for d in "${work}/killed/cells"/*; do
    [[ -f "${d}/cell.json" ]] || continue
    h=$(basename "${d}")
    now=$(stat -c %Y.%i "${d}/cell.json")
    if [[ -n "${finished[${h}]:-}" && "${finished[${h}]}" != "${now}" ]]; then fail "cell ${h} was computed twice"; fi
    finished[${h}]="${now}"
  done
  [[ ${rc} -eq 0 ]] && break
done
checks=$((checks + 1))
if [[ ${rc} -ne 0 ]]; then fail "the killed sweep never completed (${kills} kills; $(cat "${work}/kill_err.txt"))"; fi
echo "resume: ${kills} SIGKILL(s) over ${attempt} start(s)"
checks=$((checks + 1))
cmp -s "${work}/ref/results.json" "${work}/killed/results.json" || fail "results after kill and resume differ from the uninterrupted run"
cmp -s "${work}/ref/results.csv" "${work}/killed/results.csv" || fail "results.csv after kill and resume differs"
[[ -z "$(ls -A "${work}/killed/cells" | grep '^\.tmp-')" ]] || fail "temporary cell folders left behind"

# ---- shards: --shard, SLURM_ARRAY_TASK_*, merge ---------------------------------------------
expect 0 "14 cell(s) of 28 in the study" -- sweep --config "${work}/ref.toml" --shard 1/2 --dry-run
cp "${work}/out.txt" "${work}/shard1.txt"
SLURM_ARRAY_TASK_ID=2 SLURM_ARRAY_TASK_COUNT=2 SLURM_ARRAY_TASK_MIN=1 expect 0 "14 cell(s) of 28" -- \
  sweep --config "${work}/ref.toml" --dry-run
checks=$((checks + 1))
cmp -s "${work}/shard1.txt" "${work}/out.txt" || fail "SLURM task 2 of array 1-2 is not shard 1/2"
study "${work}/s0" > "${work}/s0.toml"
expect 0 "other cells remain" -- sweep --config "${work}/s0.toml" --shard 0/2
SLURM_ARRAY_TASK_ID=1 SLURM_ARRAY_TASK_COUNT=2 expect 0 "other cells remain" -- \
  sweep --config "${work}/s0.toml" --out-dir "${work}/s1"
expect 1 "14 of 28 cells are not done" -- sweep --merge "${work}/s0"
expect 0 "merged 28 cell(s)" -- sweep --merge "${work}/s0" --merge "${work}/s1"
checks=$((checks + 1))
cmp -s "${work}/ref/results.json" "${work}/s0/results.json" || fail "merged shards differ from the single run"

# ---- artifacts side by side: --artifacts-only --shard I/N builds its share of the artifacts
# whose inputs are built; one whose input another shard builds waits for a later round.
cat > "${work}/art.toml" <<EOF
out_dir = "${work}/art"
[engine]
threads = 1
[artifact.mix]
command = ["trace", "gen", "--workload", "mix", "--context-tokens", "16384", "--steps", "48", "--requests", "2", "--seed", "3"]
[artifact.needle]
command = ["trace", "gen", "--workload", "needle", "--context-tokens", "16384", "--steps", "48", "--requests", "2", "--seed", "4"]
[artifact.idx]
command = ["indexer", "train", "--traces", "@needle", "--window", "1024", "--depth", "0", "--epochs", "1", "--tau", "16", "--stride", "8"]
[[source]]
traces = ["@mix"]
[[policy]]
name = "lsa"
indexer = "@idx"
window = 1024
tau = 16
EOF
expect 0 "3 artifact(s), 0 built" -- sweep --config "${work}/art.toml" --dry-run
# Shard 0/2 holds mix and idx; idx reads needle, which is shard 1's.
expect 0 "1 wait for inputs that other shards build" -- sweep --config "${work}/art.toml" --artifacts-only --shard 0/2
expect 0 "3 artifact(s), 1 built" -- sweep --config "${work}/art.toml" --dry-run
expect 0 "artifacts of shard 1/2 built" -- sweep --config "${work}/art.toml" --artifacts-only --shard 1/2
expect 0 "3 artifact(s), 2 built" -- sweep --config "${work}/art.toml" --dry-run
expect 0 "artifacts of shard 0/2 built" -- sweep --config "${work}/art.toml" --artifacts-only --shard 0/2
checks=$((checks + 1))
grep -q "building artifact idx" "${work}/err.txt" || fail "the second round of shard 0/2 did not build idx"
expect 0 "3 artifact(s), 3 built" -- sweep --config "${work}/art.toml" --dry-run
expect 0 "3 artifact(s) built" -- sweep --config "${work}/art.toml" --artifacts-only
checks=$((checks + 1))
[[ ! -e "${work}/art/cells" ]] || fail "--artifacts-only ran cells"
expect 0 "1 cell(s) done" -- sweep --config "${work}/art.toml"
checks=$((checks + 1))
! grep -q "building artifact" "${work}/err.txt" || fail "the sweep rebuilt artifacts the shards had built"
expect 2 "--artifacts-only" -- sweep --merge "${work}/art" --artifacts-only
# A cell using an artifact built from another one (idx from needle) has one hash in every output
# folder: idx is known by its command as written and needle's, not by paths under the folder.
checks=$((checks + 1))
"${kvlab}" sweep --config "${work}/art.toml" --dry-run | head -n -1 | cut -d' ' -f1 > "${work}/art_hashes.txt"
"${kvlab}" sweep --config "${work}/art.toml" --out-dir "${work}/art_elsewhere" --dry-run | head -n -1 | cut -d' ' -f1 |
  cmp -s - "${work}/art_hashes.txt" || fail "a cell's hash depends on the output folder through a nested artifact"
# A changed input rebuilds what was built from it, and the cell is a new one.
sed -i 's/"--requests", "2", "--seed", "4"/"--requests", "2", "--seed", "5"/' "${work}/art.toml"
expect 0 "3 artifact(s), 1 built" -- sweep --config "${work}/art.toml" --dry-run
checks=$((checks + 1))
"${kvlab}" sweep --config "${work}/art.toml" --dry-run | head -n -1 | cut -d' ' -f1 | cmp -s - "${work}/art_hashes.txt" &&
  fail "the cell kept its hash when the trace its indexer was trained on changed"

# ---- MPI: rank 0 hands cells out ------------------------------------------------------------
if [[ "${have_mpi}" == "ON" ]] && command -v mpirun >/dev/null; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
  study "${work}/mpi" > "${work}/mpi.toml"
  checks=$((checks + 1))
  if ! mpirun -n 2 --oversubscribe "${kvlab}" sweep --config "${work}/mpi.toml" >"${work}/mpi_out.txt" 2>&1; then
    fail "mpirun -n 2 kvlab sweep failed: $(tail -5 "${work}/mpi_out.txt")"
  fi
  grep -q "on 1 MPI worker rank" "${work}/mpi_out.txt" || fail "MPI run did not dispatch: $(tail -5 "${work}/mpi_out.txt")"
  checks=$((checks + 1))
  cmp -s "${work}/ref/results.json" "${work}/mpi/results.json" || fail "MPI results differ from the single run"
else
  echo "skip: MPI dispatch (kvlab built with MPI: ${have_mpi}; mpirun: $(command -v mpirun || echo absent))"
  expect 1 "built without MPI" -- sweep --config "${work}/ref.toml" --mpi on
fi

# ---- the shipped studies are valid configs (checked completely by --dry-run) --------------
if [[ -n "${source_dir}" ]]; then
  for config in experiments/lsa/study.toml experiments/lsa/study_quick.toml experiments/live/accuracy_table.toml \
                experiments/live/accuracy_table_gpu.toml experiments/zoo/study.toml; do
    checks=$((checks + 1))
    (cd "${source_dir}" && "${kvlab}" sweep --config "${config}" --dry-run >"${work}/study.txt" 2>&1) ||
      fail "${config}: $(tail -1 "${work}/study.txt")"
  done
fi

echo "${checks} checks, ${failures} failures"
[[ ${failures} -eq 0 ]]
