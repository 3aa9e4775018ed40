#!/usr/bin/env bash
# The common start of a device visit script, to be sourced from the carried checkout's root:
#
#   source scripts/device-visit.sh NAME
#
# - unpacks .carry/pack/kvlab.tar.xz (scripts/device-carry.sh) into $KVLAB_VISIT_DIR (default
#   /tmp/kv) when the call carried it, else keeps what an earlier call of the same visit unpacked;
# - copies any carried model piece (.carry/gguf/a|b|c, scripts/device-model.sh split) to the
#   stash, and joins the model into $KVLAB_VISIT_DIR/models once all three are there;
# - cds there and exports LD_LIBRARY_PATH, KVLAB_SOURCE_DIR and OMP_WAIT_POLICY;
# - sets O=$OUT/NAME (the outputs), el() (a line with the seconds since the start), and an EXIT
#   trap that packs O into $OUT/NAME.tgz, so the outputs come back as one file even when the
#   script is stopped by its time limit.
# Then the script runs its commands and writes under $O.
visit_name="${1:?usage: source scripts/device-visit.sh NAME}"
visit_dir="${KVLAB_VISIT_DIR:-/tmp/kv}"
visit_stash="${KVLAB_MODEL_STASH:-/tmp/kvlab_model}"
visit_t0=$(date +%s)
if [[ -f .carry/pack/kvlab.tar.xz ]]; then
  rm -rf "$visit_dir" && mkdir -p "$visit_dir" && tar xJf .carry/pack/kvlab.tar.xz -C "$visit_dir" ||
    { echo "device-visit: cannot unpack .carry/pack/kvlab.tar.xz into $visit_dir" >&2; exit 1; }
fi
[[ -d "$visit_dir/build/bin" ]] || { echo "device-visit: $visit_dir holds no binaries (carry .carry/pack first)" >&2; exit 1; }
for piece in a b c; do
  if [[ -f ".carry/gguf/$piece" ]]; then
    KVLAB_MODEL_STASH="$visit_stash" bash "$visit_dir/scripts/device-model.sh" stash "$piece" || exit 1
  fi
done
gguf=SmolLM2-135M-Instruct.Q4_1.gguf
if [[ ! -f "$visit_dir/models/$gguf" && -f "$visit_stash/a" && -f "$visit_stash/b" && -f "$visit_stash/c" ]]; then
  (cd "$visit_dir" && KVLAB_MODEL_STASH="$visit_stash" bash scripts/device-model.sh join) || exit 1
fi
cd "$visit_dir" || exit 1
export LD_LIBRARY_PATH="$PWD/build/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" KVLAB_SOURCE_DIR="$PWD" OMP_WAIT_POLICY=passive
O="${OUT:?device-visit: OUT is not set (the device tool sets it)}/$visit_name"
mkdir -p "$O"
cp REVISION "$O/revision.txt" 2>/dev/null
el() { echo "[$(($(date +%s) - visit_t0)) s] $*"; }
visit_pack() { (cd "$OUT" && tar czf "$visit_name.tgz" "$visit_name" && rm -rf "$visit_name"); }
trap visit_pack EXIT
