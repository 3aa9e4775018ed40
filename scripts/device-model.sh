#!/usr/bin/env bash
# The model for device calls: the 98 MB GGUF exceeds one call's 64 MiB, so it travels in two
# halves, in two calls on the same warm machine.
#
#   scripts/device-model.sh split          here: .carry/gguf/a (45 MB) and .carry/gguf/b (53 MB)
#   scripts/device-model.sh stash a|b      there (call 1, call 2): copy the carried half to /tmp/kvlab_model
#   scripts/device-model.sh join           there: join the halves into models/, check the hash
# Paths are relative to the current folder (the checkout's root, here and there).
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
gguf=SmolLM2-135M-Instruct.Q4_1.gguf
stash="${KVLAB_MODEL_STASH:-/tmp/kvlab_model}"  # where the halves wait between calls
case "${1:-}" in
  split)
    [[ -f "models/$gguf" ]] || "$here/fetch-model.sh"
    mkdir -p .carry/gguf
    rm -f .carry/gguf/a .carry/gguf/b
    # The first part is the smaller: it travels beside the binaries (device-carry.sh).
    first=45000000
    head -c "$first" "models/$gguf" >.carry/gguf/a
    tail -c +$((first + 1)) "models/$gguf" >.carry/gguf/b
    ls -l .carry/gguf ;;
  stash)
    mkdir -p "$stash"
    cp ".carry/gguf/$2" "$stash/$2" ;;
  join)
    mkdir -p models
    cat "$stash/a" "$stash/b" >"models/$gguf.tmp"
    got=$(sha256sum "models/$gguf.tmp" | cut -d' ' -f1)
    want=$(sed -n 's/^readonly MODEL_SHA256="\([0-9a-f]*\)"/\1/p' "$here/fetch-model.sh")
    [[ "$got" == "$want" ]] || { rm -f "models/$gguf.tmp"; echo "device-model: hash $got, expected $want" >&2; exit 1; }
    mv "models/$gguf.tmp" "models/$gguf"
    echo "device-model: models/$gguf ($got)" ;;
  *) sed -n 2,8p "$0"; exit 2 ;;
esac
