#!/usr/bin/env bash
# The LSA study (study.toml) on one many-core machine: kvlab sweep's artifacts built side by side
# (--artifacts-only --shard, in rounds: the traces, then the indexers), the cells as JOBS
# parallel `kvlab sweep --shard I/JOBS` processes (one per core, --threads 1), merged and
# rendered by `kvlab report`; then the indexer evals the README's report cites (run_all.sh's
# steps 4 and 9) and analysis/lsa_report.py --sweep, which rewrites the committed
# RESULTS/REPORT.md from RESULTS/results.json and RESULTS/eval, RESULTS/ablation.
#
#   experiments/lsa/run_study_sharded.sh [STUDY]     (default experiments/lsa/study.toml)
#
# Environment: KVLAB (build/bin/kvlab), JOBS (nproc), OUT_DIR (the sweep's folder; default the
# study's out_dir), RESULTS (where results.json, eval/, ablation/ and REPORT.md go; default
# experiments/lsa/results for study.toml, OUT_DIR/committed otherwise), PACK (a .tgz of what
# changed, for a device call's $OUT; default $OUT/lsa_study.tgz when OUT is set; a stopped run
# packs its finished cells and indexers into PACK's _partial.tgz instead).
#
# Safe to re-run, and resumable across time-limited calls: the sweep skips finished cells and
# built artifacts, evals are skipped when their file exists, and a run killed (SIGTERM, or a
# call's limit) stops its shards; the next run goes on from there. Exit 0 when everything is
# done, 1 when a step failed (its log is named).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
study="${1:-experiments/lsa/study.toml}"
K="${KVLAB:-build/bin/kvlab}"
jobs="${JOBS:-$(nproc)}"
[[ -x "$K" ]] || { echo "run_study_sharded: KVLAB=$K is not an executable" >&2; exit 2; }
[[ -f "$study" ]] || { echo "run_study_sharded: $study: no such study" >&2; exit 2; }
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "run_study_sharded: JOBS=$jobs must be a positive integer" >&2; exit 2; }
# One kvlab per core: OpenMP threads that spin while waiting would stall the other processes.
export OMP_WAIT_POLICY=passive
if [[ -z "${OUT_DIR:-}" ]]; then
  OUT_DIR=$(sed -n 's/^out_dir = "\(.*\)"$/\1/p' "$study" | head -1)
  [[ -n "$OUT_DIR" ]] || { echo "run_study_sharded: $study has no out_dir line; set OUT_DIR" >&2; exit 2; }
fi
if [[ -z "${RESULTS:-}" ]]; then
  if [[ "$study" == experiments/lsa/study.toml ]]; then RESULTS=experiments/lsa/results; else RESULTS="$OUT_DIR/committed"; fi
fi
pack="${PACK:-${OUT:+$OUT/lsa_study.tgz}}"
logs="$OUT_DIR/logs"
mkdir -p "$logs"
t0=$(date +%s)
say() { echo "[$(($(date +%s) - t0)) s] $*"; }

# Children are tracked by pid: a SIGTERM (a call's time limit) stops exactly those, so the next
# run finds only dead processes' temporaries, which the sweep removes.
pids=()
stop() {
  say "stopped; ${#pids[@]} process(es) ended; run again to go on"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait
  pack_progress
  exit 1
}
# With PACK set, a stopped run also packs what a fresh machine cannot redo quickly: the finished
# cells and the indexers with their build stamps (not the traces: large, and rebuilt in a round).
# Unpacked into the tree (tar xzf PARTIAL), the next run there skips them.
pack_progress() {
  [[ -n "$pack" && -d "$OUT_DIR/artifacts" ]] || return 0
  local partial="${pack%.tgz}_partial.tgz" keep=()
  for a in "$OUT_DIR"/artifacts/*.json; do
    [[ -e "$a" ]] || continue
    local h5="${a%.json}.h5"
    if grep -q '"indexer"' "$a" && [[ -f "$h5" ]]; then keep+=("$a" "$h5" "${a%.json}.out"); fi
  done
  [[ -d "$OUT_DIR/cells" ]] && keep+=("$OUT_DIR/cells")
  [[ ${#keep[@]} -gt 0 ]] || return 0
  mkdir -p "$(dirname "$partial")"
  tar czf "$partial" --exclude='.tmp-*' "${keep[@]}" 2>/dev/null &&
    say "packed the progress so far into $partial ($(stat -c %s "$partial") bytes; tar xzf it into the tree to resume elsewhere)"
}
trap stop TERM INT

# run_all NAME CMD...: CMD once per shard i in 0..jobs-1 (with {I} replaced by i), side by side.
run_all() {
  local name=$1 i rc=0 failed=()
  shift
  pids=()
  for ((i = 0; i < jobs; i++)); do
    "${@//\{I\}/$i}" >"$logs/$name.$i.log" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { rc=1; failed+=("$logs/$name.$i.log"); }
  done
  pids=()
  if [[ $rc -ne 0 ]]; then
    echo "run_study_sharded: $name failed in ${#failed[@]} shard(s); first: ${failed[0]}:" >&2
    tail -3 "${failed[0]}" >&2
    exit 1
  fi
}

built() {  # "K artifact(s), B built" from the dry run -> "B K"
  "$K" sweep --config "$study" --out-dir "$OUT_DIR" --dry-run | tail -1 |
    sed -n 's/.* \([0-9]*\) artifact(s), \([0-9]*\) built.*/\2 \1/p'
}

# ---- 1. artifacts: rounds of JOBS shards until every one is built --------------------------
read -r have total < <(built)
[[ -n "${total:-}" ]] || { echo "run_study_sharded: $K sweep --dry-run failed on $study" >&2; "$K" sweep --config "$study" --dry-run >&2; exit 1; }
round=0
while [[ $have -lt $total ]]; do
  round=$((round + 1))
  say "artifacts: $have of $total built; round $round on $jobs shards"
  run_all "artifacts$round" "$K" sweep --config "$study" --out-dir "$OUT_DIR" --artifacts-only --shard "{I}/$jobs"
  before=$have
  read -r have total < <(built)
  [[ $have -gt $before ]] || { echo "run_study_sharded: an artifact round built nothing ($have of $total)" >&2; exit 1; }
done
say "artifacts: $total built"

# ---- 2. cells: JOBS shards of one thread each, then the merge and the HTML report -----------
say "cells: $("$K" sweep --config "$study" --out-dir "$OUT_DIR" --dry-run | tail -1)"
run_all cells "$K" sweep --config "$study" --out-dir "$OUT_DIR" --shard "{I}/$jobs" --threads 1
"$K" sweep --merge "$OUT_DIR" >"$logs/merge.log" 2>&1 || { cat "$logs/merge.log" >&2; exit 1; }
"$K" report "$OUT_DIR" >"$logs/report.log" 2>&1 || { cat "$logs/report.log" >&2; exit 1; }
say "cells: merged into $OUT_DIR/results.json; $OUT_DIR/report.html"

# ---- 3. the indexers alone (run_all.sh steps 4 and 9): kvlab indexer eval --json ------------
art="$OUT_DIR/artifacts"
mkdir -p "$OUT_DIR/eval" "$OUT_DIR/ablation"
evals=()  # "INDEXER TRACE OUTPUT"
for t in "$art"/test_*.h5; do evals+=("$art/indexer.h5 $t $OUT_DIR/eval/$(basename "$t" .h5).json"); done
single=$(ls "$art"/test_diffuse_*.h5 | head -1)
n1=${single##*_}; n1=${n1%.h5}
for idx in "$art"/indexer*.h5; do
  v=$(basename "$idx" .h5); v=${v#indexer}; v=${v#_}; v=${v:-study}
  for w in needle multi_needle multi_hop diffuse; do
    evals+=("$idx $art/test_${w}_$n1.h5 $OUT_DIR/ablation/eval_${v}_${w}.json")
  done
done
eval_one() {  # eval_one INDEXER TRACE OUTPUT (skipped when OUTPUT exists)
  [[ -f "$3" ]] && return 0
  "$K" indexer eval --indexer "$1" --trace "$2" --json --threads 1 >"$3.tmp.$$" && mv "$3.tmp.$$" "$3"
}
pids=()
failed=0
for e in "${evals[@]}"; do
  # shellcheck disable=SC2086
  eval_one $e 2>>"$logs/eval.log" &
  pids+=($!)
  if [[ ${#pids[@]} -ge $jobs ]]; then wait "${pids[0]}" || failed=1; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p" || failed=1; done
pids=()
[[ $failed -eq 0 ]] || { echo "run_study_sharded: an indexer eval failed:" >&2; tail -3 "$logs/eval.log" >&2; exit 1; }
say "evals: ${#evals[@]} in $OUT_DIR/eval, $OUT_DIR/ablation"

# ---- 4. the committed results: results.json, the evals and REPORT.md ------------------------
mkdir -p "$RESULTS/eval" "$RESULTS/ablation"
cp "$OUT_DIR/results.json" "$RESULTS/results.json"
cp "$OUT_DIR"/eval/*.json "$RESULTS/eval/"
cp "$OUT_DIR"/ablation/eval_*.json "$RESULTS/ablation/"
python3 analysis/lsa_report.py --sweep "$RESULTS" >"$logs/lsa_report.log" 2>&1 ||
  { cat "$logs/lsa_report.log" >&2; exit 1; }
say "report: $RESULTS/REPORT.md ($(ls "$RESULTS"/pareto_*.png 2>/dev/null | wc -l) plots; none without matplotlib)"
if [[ -n "$pack" ]]; then
  mkdir -p "$(dirname "$pack")"
  tar czf "$pack" --exclude="*.h5" "$RESULTS" "$OUT_DIR/report.html" "$OUT_DIR/results.csv" "$logs"
  say "packed $pack ($(stat -c %s "$pack") bytes)"
fi
say "done"
