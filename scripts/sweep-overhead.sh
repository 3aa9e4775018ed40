#!/usr/bin/env bash
# A sweep's overhead per cell against running the same cell directly: CELLS cells (one trace x
# CELLS sliding_window windows) run as one `kvlab sweep` (a fresh output folder: config check,
# every cell's folder, files and rename, the merge) and as CELLS `kvlab replay --json` processes
# (one per cell, as a hand-written script runs them), REPEAT times interleaved; prints the
# medians per cell. The cell's own compute is the same code in both (cli.sweep checks that the
# numbers are equal).
#
#   scripts/sweep-overhead.sh        Environment: KVLAB (build/bin/kvlab), CELLS (20), REPEAT (5),
#                                    CONTEXT (16384), STEPS (48), WORK (a temporary folder)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
K="${KVLAB:-build/bin/kvlab}"
cells="${CELLS:-20}"
repeat="${REPEAT:-5}"
context="${CONTEXT:-16384}"
steps="${STEPS:-48}"
[[ -x "$K" ]] || { echo "sweep-overhead: KVLAB=$K is not an executable" >&2; exit 2; }
work="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/kvlab_sweep_overhead.XXXXXX")}"
mkdir -p "$work"
export OMP_WAIT_POLICY=passive
trace="$work/mix.h5"
[[ -f "$trace" ]] || "$K" trace gen --workload mix --context-tokens "$context" --steps "$steps" --requests 2 --seed 3 \
  --out "$trace" >/dev/null
windows=()
for ((i = 0; i < cells; i++)); do windows+=($((1024 + 64 * i))); done
{
  echo "out_dir = \"$work/sweep\""
  echo "[engine]"
  echo "threads = 1"
  echo "[[source]]"
  echo "traces = [\"$trace\"]"
  echo "[[policy]]"
  echo "name = \"sliding_window\""
  echo "sinks = 64"
  echo "window = [$(IFS=,; echo "${windows[*]}")]"
} >"$work/study.toml"
now() { date +%s.%N; }
sweep_s=() direct_s=() compute_s=()
for ((r = 0; r < repeat; r++)); do
  rm -rf "$work/sweep" "$work/direct"
  t0=$(now)
  "$K" sweep --config "$work/study.toml" >/dev/null 2>&1
  t1=$(now)
  mkdir -p "$work/direct"
  for w in "${windows[@]}"; do
    "$K" replay --trace "$trace" --policy "sliding_window:sinks=64,window=$w" --threads 1 --json >"$work/direct/$w.json"
  done
  t2=$(now)
  sweep_s+=("$(python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$t0" "$t1")")
  direct_s+=("$(python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$t1" "$t2")")
  compute_s+=("$(python3 -c "import glob, json, sys; print(sum(json.load(open(f))['seconds'] for f in glob.glob(sys.argv[1] + '/cells/*/cell.json')))" "$work/sweep")")
done
python3 - "$cells" "${sweep_s[*]}" "${direct_s[*]}" "${compute_s[*]}" "$context" "$steps" <<'PY'
import statistics, sys
n = int(sys.argv[1])
sweep, direct, compute = ([float(x) / n for x in a.split()] for a in sys.argv[2:5])
ms = lambda v: f"{1e3 * statistics.median(v):.1f} ms"
print(f"{n} cells of sliding_window on a 2 x {sys.argv[5]}-token x {sys.argv[6]}-step trace, medians of {len(sweep)} runs, per cell:")
print(f"  kvlab sweep (one process, fresh folder)  {ms(sweep)}  (of which the cells' own time {ms(compute)})")
print(f"  kvlab replay --json, one process a cell   {ms(direct)}")
print(f"  sweep overhead per cell over its compute {ms([s - c for s, c in zip(sweep, compute)])}; "
      f"sweep against direct {ms([s - d for s, d in zip(sweep, direct)])}")
PY
[[ -n "${WORK:-}" ]] || rm -rf "$work"
