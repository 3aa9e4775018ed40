#!/usr/bin/env bash
# The model for device calls: a call carries the tracked tree (about 15 MB) plus what it names,
# at most 64 MiB in all, so the 98 MB GGUF travels in three pieces, in three calls on the same
# warm machine (the first beside a light pack of binaries, BINS=kvlab scripts/device-carry.sh).
#
#   scripts/device-model.sh split            here: .carry/gguf/a (34 MB), b (44 MB), c (20 MB)
#   scripts/device-model.sh stash a|b|c      there (calls 1-3): copy the carried piece to /tmp/kvlab_model
#   scripts/device-model.sh join             there: join the pieces into models/, check the hash
# Paths are relative to the current folder (the checkout's root, here and there).
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
gguf=SmolLM2-135M-Instruct.Q4_1.gguf
stash="${KVLAB_MODEL_STASH:-/tmp/kvlab_model}"  # where the halves wait between calls
case "${1:-}" in
  split)
    [[ -f "models/$gguf" ]] || "$here/fetch-model.sh"
    mkdir -p .carry/gguf
    rm -f .carry/gguf/a .carry/gguf/b .carry/gguf/c
    # The first piece is the smallest of the two large ones: it travels beside the binaries.
    first=34000000
    second=44000000
    head -c "$first" "models/$gguf" >.carry/gguf/a
    dd if="models/$gguf" of=.carry/gguf/b bs=1M iflag=skip_bytes,count_bytes skip="$first" count="$second" status=none
    tail -c +$((first + second + 1)) "models/$gguf" >.carry/gguf/c
    ls -l .carry/gguf ;;
  stash)
    mkdir -p "$stash"
    cp ".carry/gguf/$2" "$stash/$2" ;;
  join)
    mkdir -p models
    for piece in a b c; do
      [[ -f "$stash/$piece" ]] || { echo "device-model: piece $piece missing in $stash (stash a, b and c first)" >&2; exit 1; }
    done
    cat "$stash/a" "$stash/b" "$stash/c" >"models/$gguf.tmp"
    got=$(sha256sum "models/$gguf.tmp" | cut -d' ' -f1)
    want=$(sed -n 's/^readonly MODEL_SHA256="\([0-9a-f]*\)"/\1/p' "$here/fetch-model.sh")
    [[ "$got" == "$want" ]] || { rm -f "models/$gguf.tmp"; echo "device-model: hash $got, expected $want" >&2; exit 1; }
    mv "models/$gguf.tmp" "models/$gguf"
    echo "device-model: models/$gguf ($got)" ;;
  *) sed -n 2,9p "$0"; exit 2 ;;
esac
