#!/usr/bin/env bash
# Files and flags a hostile or careless user might give kvlab: traces written by plain h5py
# (the minimum content of traces/FORMAT.md must load), crafted bad traces (each must fail with
# exit 1 and one line naming the file and field), out-of-range flags and policy parameters
# (exit 2, or the documented meaning), and output paths that must not be destroyed.
# usage: hardening_test.sh PATH/TO/kvlab PYTHON_WITH_H5PY [PATH/TO/kvlab_cpu_bench]
set -uo pipefail

kvlab="$1"
python="${2:-/usr/bin/python3}"
cpu_bench="${3:-}"
work="$(mktemp -d "${TMPDIR:-/tmp}/kvlab_hardening_test.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/expect_lib.sh"

if ! "${python}" -c "import h5py, numpy" 2>/dev/null; then
  echo "SKIP: hardening_test: ${python} cannot import h5py (scripts/setup.sh installs python3-h5py)"
  exit 0
fi
crafted="${work}/crafted"
"${python}" "$(dirname "${BASH_SOURCE[0]}")/craft_traces.py" "${crafted}" || { echo "FAIL: craft_traces.py"; exit 1; }
c() { echo "${crafted}/$1.h5"; }

# ---- interoperability: minimal traces from plain h5py load ------------------------------
for name in minimal_dense minimal_sparse; do
  expect 0 "$(c ${name}): valid (1 request(s), 3 steps" -- trace validate "$(c ${name})"
  expect 0 "" -- trace info "$(c ${name})" --json
  cp "${work}/out.txt" "${work}/${name}.json"
  expect 0 "" -- replay --trace "$(c ${name})" --policy full --policy sliding_window:window=4,sinks=0 --json
  cp "${work}/out.txt" "${work}/${name}_replay.json"
  json_check "${work}/${name}_replay.json" 'd[0]["steps"] == 3 and abs(d[0]["critical_recall"] - 1) < 1e-9'
done
json_check "${work}/minimal_dense.json" 'd["requests"][0]["storage"] == "dense" and d["requests"][0]["heads_stored"] == 2'
json_check "${work}/minimal_sparse.json" 'd["requests"][0]["storage"] == "sparse" and d["requests"][0]["heads_stored"] == 1'
expect 1 "$(c storage_ambiguous): request r0: no attribute mass_storage, and both datasets mass and mass_indptr" \
  -- trace info "$(c storage_ambiguous)"

# ---- geometry: sane limits, the attribute named, the number the file holds ---------------
expect 1 "$(c geometry_65536): root attribute n_layers must be between 1 and 4096, got 65536" \
  -- replay --trace "$(c geometry_65536)" --policy full
expect 1 "$(c geometry_65536): root attribute n_layers must be between 1 and 4096" -- trace validate "$(c geometry_65536)"
expect 1 "root attribute n_layers must be between 1 and 4096, got 1099511627776" -- trace info "$(c layers_2_40)"
expect 1 "attribute 'n_layers' = 18446744073709551615 does not fit in int64" -- trace info "$(c layers_uint64_max)"
expect 1 "bytes per token is above the limit" -- trace info "$(c bytes_per_token_overflow)"

# ---- silent wrong answers become errors --------------------------------------------------
expect 1 "$(c empty_trace): group /requests holds no requests" -- trace validate "$(c empty_trace)"
expect 1 "$(c empty_trace): group /requests holds no requests" -- replay --trace "$(c empty_trace)" --policy full
expect 1 "$(c nan_query): request r0: query step 1 column 2 is nan" -- trace validate "$(c nan_query)"
expect 1 "$(c inf_chunk_features): request r0: chunk_features row (chunk) 2 column 1 is inf" \
  -- trace validate "$(c inf_chunk_features)"
expect 1 "mass_index step 0: row 1 (layer 1, head 0) lists chunk -1" -- trace validate "$(c negative_index)"
expect 1 "mass_value step 1: row 1 (layer 1, head 0) is not sorted by decreasing value" \
  -- replay --trace "$(c unsorted_row)" --policy full

# A data chunk damaged on disk, read on worker threads: one line, not HDF5's error stack from
# each thread (its automatic printing is silenced on every thread, not only the first).
expect 0 "" -- trace gen --context-tokens 8192 --steps 32 --requests 4 --out "${work}/four.h5"
"${python}" -c 'import os, sys
f = open(sys.argv[1], "r+b"); f.seek(os.path.getsize(sys.argv[1]) * 3 // 10); f.write(b"\xff" * 2048)' "${work}/four.h5"
expect 1 "/mass: cannot read data (file damaged?)" -- replay --trace "${work}/four.h5" --policy full --threads 4

# ---- memory from tiny files --------------------------------------------------------------
# trace info reads headers only: a 2^34-token sparse request costs nothing (it used to
# allocate 4 bytes per chunk, 4 GiB here). 1.5 GB of address space is plenty.
checks=$((checks + 1))
(ulimit -v 1500000 && "${kvlab}" trace info "$(c huge_sparse_prompt)" >"${work}/out.txt" 2>"${work}/err.txt") ||
  fail "trace info on a 2^34-token sparse header: $(cat "${work}/err.txt")"
grep -q "17179869184" "${work}/out.txt" || fail "trace info does not show the 2^34-token prompt"
expect 1 "$(c huge_unwritten_dense): request r0: mass: one step holds 4294967298 cells" \
  -- replay --trace "$(c huge_unwritten_dense)" --policy full

# ---- names are echoed on one line --------------------------------------------------------
expect 1 "request bad\\nid: attribute mass_storage = 'dense\\nor not'" -- trace info "$(c newline_in_names)"
# Names the user typed are escaped too, wherever the message comes from.
expect 2 "unknown policy 'full\\nx'" -- replay --trace "$(c minimal_dense)" --policy $'full\nx'
expect 2 "unknown parameter 'win\\ndow'" -- replay --trace "$(c minimal_dense)" --policy $'sliding_window:win\ndow=3'
expect 2 "unknown command 'tr\\tace'" -- $'tr\tace'
expect 1 "${work}/no\\nsuch.h5: no such file" -- trace info "${work}/no"$'\n'"such.h5"

# ---- unreadable files are "permission denied" ------------------------------------------
# root reads everything, so as root the commands run as nobody (setpriv), where they can.
as_user=()
[[ $(id -u) -eq 0 ]] && as_user=(setpriv --reuid=65534 --regid=65534 --clear-groups)
chmod 711 "${work}"
mkdir -p "${work}/perm/locked"
cp "$(c minimal_dense)" "${work}/perm/closed.h5"
cp "$(c minimal_dense)" "${work}/perm/locked/inside.h5"
chmod 000 "${work}/perm/closed.h5"
chmod 700 "${work}/perm/locked"
chmod 755 "${work}/perm"
if [[ ${#as_user[@]} -gt 0 ]] && ! "${as_user[@]}" test -x "${kvlab}" 2>/dev/null; then
  echo "hardening_test: nobody cannot run ${kvlab}; permission checks skipped"
else
  kvlab_real="${kvlab}"
  kvlab_as_user() { "${as_user[@]}" "${kvlab_real}" "$@"; }
  kvlab=kvlab_as_user
  expect 1 "${work}/perm/closed.h5: permission denied" -- trace info "${work}/perm/closed.h5"
  expect 1 "${work}/perm/locked/inside.h5: permission denied" -- replay --trace "${work}/perm/locked/inside.h5" \
    --policy full
  expect 1 "--csv ${work}/perm/locked/r.csv: cannot write into folder ${work}/perm/locked (Permission denied)" \
    -- replay --trace "$(c minimal_dense)" --policy full --csv "${work}/perm/locked/r.csv"
  kvlab="${kvlab_real}"
fi
chmod 700 "${work}"

# ---- budgets: out of range is a usage error, above the context means everything ----------
trace="${work}/mix.h5"
expect 0 "" -- trace gen --workload mix --context-tokens 2048 --steps 8 --requests 1 --out "${trace}"
for spec in random:budget=1e30 oracle_topk:budget=1e30 random:budget=1.5; do
  expect 2 "policy ${spec%%:*}: parameter 'budget' is a fraction larger than the whole context (${spec#*=})" \
    -- replay --trace "${trace}" --policy "${spec}"
  expect 2 "parameter 'budget' is a fraction larger" -- policy check --policy "${spec}"
done
expect 2 "policy oracle_topk: parameter 'budget' must not be negative, got -3" \
  -- replay --trace "${trace}" --policy oracle_topk:budget=-3
expect 0 "" -- replay --trace "${trace}" --json --policy random:budget=9223372036854775807 \
  --policy oracle_topk:budget=9223372036854775807 --policy sliding_window:window=9223372036854775807
cp "${work}/out.txt" "${work}/everything.json"
json_check "${work}/everything.json" 'len(d) == 3 and all(abs(r["footprint_mean_ratio"] - 1) < 1e-9 and abs(r["critical_recall"] - 1) < 1e-9 for r in d)'

# ---- flags that used to crash or print the wrong number ----------------------------------
expect 2 "--threads must be between 0 and 4096, got 100000" -- indexer train --traces "${trace}" --out "${work}/i.h5" \
  --threads 100000
expect 2 "--threads must be between 0 and 4096, got -1" -- indexer eval --trace "${trace}" --indexer "${work}/i.h5" \
  --threads -1
expect 2 "--threads must be between 0 and 4096, got 5000" -- replay --trace "${trace}" --policy full --threads 5000
expect 2 "--threads must be between 0 and 4096" -- demo --threads 9999
expect 2 "--batch must be between -2147483648 and 2147483647, got 9223372036854775807" \
  -- indexer train --traces "${trace}" --out "${work}/i.h5" --batch 9223372036854775807
expect 2 "--context-tokens must be between 1 and 1073741824, got 9223372036854775807" \
  -- trace gen --context-tokens 9223372036854775807 --out "${work}/x.h5"

# ---- outputs: never replace what is not a regular file; checked before the run -------------
expect 1 "--csv /dev/null: is a device, not a regular file" -- replay --trace "${trace}" --policy full --csv /dev/null
checks=$((checks + 1))
[[ -c /dev/null ]] || fail "/dev/null is no longer a character device"
mkfifo "${work}/fifo"
expect 1 "--csv ${work}/fifo: is a FIFO" -- replay --trace "${trace}" --policy full --csv "${work}/fifo"
echo "keep me" >"${work}/kept.txt"
ln -s "${work}/kept.txt" "${work}/link.csv"
expect 1 "--csv ${work}/link.csv: is a symbolic link" -- replay --trace "${trace}" --policy full --csv "${work}/link.csv"
checks=$((checks + 1))
[[ -L "${work}/link.csv" && "$(cat "${work}/kept.txt")" == "keep me" ]] || fail "the symlink or its target was replaced"
expect 1 "${work}/link.csv: is a symbolic link" -- trace gen --context-tokens 256 --steps 2 --out "${work}/link.csv"
# Outputs are checked first: the bad --csv is reported, not the (also missing) trace after a run.
expect 2 "--csv: empty path" -- replay --trace "${work}/missing.h5" --policy full --csv ''
expect 2 "--out-dir: empty path" -- replay --trace "${work}/missing.h5" --policy full --out-dir ''
echo "a file" >"${work}/afile"
expect 1 "--out-dir ${work}/afile/run/results.csv: cannot create folder" \
  -- replay --trace "${work}/missing.h5" --policy full --out-dir "${work}/afile/run"
expect 1 "--out ${work}/afile/i.h5: cannot create folder" -- indexer train --traces "${trace}" --out "${work}/afile/i.h5"
# Every output flag creates missing folders, trace gen's --out included.
expect 0 "wrote ${work}/new/dir/t.h5" -- trace gen --context-tokens 256 --steps 2 --out "${work}/new/dir/t.h5"
# A temporary left by a process that no longer runs (SIGKILL) is removed by the next write.
echo "stale" >"${work}/r.csv.tmp.999999999"
expect 0 "" -- replay --trace "${trace}" --policy full --csv "${work}/r.csv"
checks=$((checks + 1))
[[ -e "${work}/r.csv.tmp.999999999" ]] && fail "a stale temporary of a dead process was left in place"
# SIGTERM and SIGINT remove the temporary and still end the process by the signal. On the way,
# the OpenMP wait policy: passive unless the user chose one (first run unset, second "active").
for sig in TERM INT; do
  if [[ ${sig} == TERM ]]; then policy_env=(env -u OMP_WAIT_POLICY); want=passive; else
    policy_env=(env OMP_WAIT_POLICY=active); want=active; fi
  checks=$((checks + 1))
  rm -rf "${work}/killed"
  mkdir -p "${work}/killed"
  # A script's background jobs start with SIGINT ignored; the wrapper restores the default, as
  # an interactive shell's foreground job has it.
  "${policy_env[@]}" "${python}" -c \
    'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])' \
    "${kvlab}" trace gen --context-tokens 131072 --steps 512 --requests 4 --out "${work}/killed/big.h5" \
    >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    compgen -G "${work}/killed/big.h5.tmp.*" >/dev/null && break
    sleep 0.1
  done
  checks=$((checks + 1))
  tr '\0' '\n' <"/proc/${pid}/environ" | grep -qx "OMP_WAIT_POLICY=${want}" ||
    fail "kvlab runs with OMP_WAIT_POLICY=$(tr '\0' '\n' <"/proc/${pid}/environ" | grep OMP_WAIT), expected ${want}"
  kill -"${sig}" "${pid}"
  wait "${pid}"
  rc=$?
  expected=$((128 + $(kill -l "${sig}")))
  [[ ${rc} -eq ${expected} ]] || fail "trace gen killed by SIG${sig} exited ${rc}, expected ${expected}"
  leftover="$(ls "${work}/killed")"
  [[ -z "${leftover}" ]] || fail "SIG${sig} left files behind: ${leftover}"
done

# ---- indexer checkpoints: bad label fields and weights are bad files ----------------------
needle="${work}/needle.h5"
expect 0 "" -- trace gen --workload needle --context-tokens 4096 --steps 48 --requests 2 --out "${needle}"
idx="${work}/idx.h5"
expect 0 "wrote ${idx}" -- indexer train --traces "${needle}" --out "${idx}" --window 1024 --tau 16 --stride 8 \
  --depth 0 --dim 8 --epochs 1 --threads 1
expect 1 "--traces ${trace}: no refresh points: the longest request has 8 decode steps, not more than --tau = 64" \
  -- indexer train --traces "${trace}" --out "${work}/short.h5"
# The table shows a policy's file parameters by file name; the JSON keeps the whole path.
expect 0 "indexer=.../idx.h5" -- replay --trace "${needle}" --policy "lsa:indexer=${idx},budget=0.9"
checks=$((checks + 1))
grep -qF "${idx}" "${work}/out.txt" && fail "the results table prints the indexer's whole path"
ckpt="${work}/ckpt"
"${python}" "$(dirname "${BASH_SOURCE[0]}")/craft_checkpoints.py" "${idx}" "${ckpt}" || fail "craft_checkpoints.py"
expect 1 "${ckpt}/tau_zero.h5: checkpoint config field 'labels.tau' must be positive, got 0" \
  -- indexer eval --indexer "${ckpt}/tau_zero.h5" --trace "${needle}"
expect 1 "${ckpt}/window_negative.h5: checkpoint config field 'labels.window' must not be negative, got -5" \
  -- indexer eval --indexer "${ckpt}/window_negative.h5" --trace "${needle}"
expect 1 "${ckpt}/critical_mass_5.h5: checkpoint config field 'labels.critical_mass' must be in (0, 1]" \
  -- replay --trace "${needle}" --policy "lsa:indexer=${ckpt}/critical_mass_5.h5"
expect 1 "${ckpt}/nan_weight.h5:/tensors/query_tower.layers.0.weight: tensor value 3 is nan" \
  -- replay --trace "${needle}" --policy "lsa:indexer=${ckpt}/nan_weight.h5"
expect 1 "${ckpt}/width_huge.h5: tensor 'query_tower.layers.0.weight' has shape [8, 64]" \
  -- indexer eval --indexer "${ckpt}/width_huge.h5" --trace "${needle}"

# ---- kvlab_cpu_bench: --help answers, bad flags are usage errors (before the model loads) ----
if [[ -n "${cpu_bench}" ]]; then
  bench_expect() {  # CODE NEEDLE ARGS...: exit code and one line holding NEEDLE
    local code="$1" needle="$2"
    shift 2
    checks=$((checks + 1))
    "${cpu_bench}" "$@" >"${work}/out.txt" 2>&1
    local rc=$?
    [[ ${rc} -eq ${code} ]] || fail "kvlab_cpu_bench $* exited ${rc}, expected ${code}: $(head -c 300 "${work}/out.txt")"
    grep -qF -- "${needle}" "${work}/out.txt" || fail "kvlab_cpu_bench $*: no '${needle}': $(head -c 300 "${work}/out.txt")"
  }
  bench_expect 0 "usage: kvlab_cpu_bench [--model FILE]" --help
  bench_expect 2 "kvlab_cpu_bench: --steps needs a value" --steps
  bench_expect 2 "kvlab_cpu_bench: --threads must be a whole number between 0 and 4096, got '-1'" --threads -1
  bench_expect 2 "kvlab_cpu_bench: --decode 20 leaves no prompt before 2 x --steps 16 timed steps" --decode 20
  bench_expect 2 "kvlab_cpu_bench: unknown option --fast" --fast 1
fi

echo "hardening_test: ${checks} checks, ${failures} failed"
[[ ${failures} -eq 0 ]]
