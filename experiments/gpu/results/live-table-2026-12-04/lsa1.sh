#!/usr/bin/env bash
# Calls 1-2 of the LSA label visit: unpack the binaries, stash the model's pieces (the tree plus
# the model exceeds one call's 64 MiB, so it travels in three pieces).
set -euo pipefail
mkdir -p /tmp/kvlab_model
if [[ -f .carry/pack/kvlab.tar.xz ]]; then rm -rf /tmp/kv && mkdir -p /tmp/kv && tar xJf .carry/pack/kvlab.tar.xz -C /tmp/kv; fi
for p in a b c; do [[ -f .carry/gguf/$p ]] && cp .carry/gguf/$p /tmp/kvlab_model/$p; done
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
cat /tmp/kv/REVISION; ls -l /tmp/kvlab_model
