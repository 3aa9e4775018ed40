#!/usr/bin/env bash
# The scripts that prepare a device visit (scripts/device-carry.sh, scripts/device-model.sh):
# the pack holds the binaries, libkvlab_core and the scripts a visit runs, and the model split
# into three pieces joins back to the same file, hash-checked.
# usage: device_scripts_test.sh SOURCE_DIR BUILD_DIR
set -uo pipefail
root="$1"
build="$2"
work="$(mktemp -d "${TMPDIR:-/tmp}/kvlab_device_scripts_test.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
checks=0
failures=0
check() {  # DESCRIPTION COMMAND...
  local what="$1"
  shift
  checks=$((checks + 1))
  if ! "$@" >"${work}/last.txt" 2>&1; then
    failures=$((failures + 1))
    echo "FAIL: ${what}: $(tail -n 3 "${work}/last.txt" | tr '\n' ' ')"
  fi
}

# ---- the pack -------------------------------------------------------------------------------
if [[ -x "${build}/bin/kvlab_gpu_tests" ]]; then
  pack="${work}/kvlab.tar.xz"
  check "device-carry.sh packs" env BUILD_DIR="${build}" bash "${root}/scripts/device-carry.sh" "${pack}"
  check "the pack lists its binaries and scripts" bash -c "tar tJf '${pack}' > '${work}/pack.txt'"
  for f in ./build/bin/kvlab ./build/bin/kvlab_gpu_tests ./build/lib/libkvlab_core.so.0 ./scripts/device-check.sh \
           ./experiments/gpu/live_table.sh ./experiments/lsa/real/record_train.sh ./experiments/lsa/real/train_size.sh \
           ./experiments/lsa/real/results/indexer_real_1008.h5 ./REVISION; do
    check "the pack holds ${f}" grep -qx "${f}" "${work}/pack.txt"
  done
  check "earlier visits' results stay behind" bash -c "! grep -q '^./experiments/gpu/results/' '${work}/pack.txt'"
  check "the pack fits one call beside the model's first piece (< 16 MB)" \
    bash -c "[[ \$(stat -c %s '${pack}') -lt 16000000 ]]"
else
  echo "device_scripts_test: no CUDA build (${build}/bin/kvlab_gpu_tests): the pack is not checked"
fi

# ---- the model in three pieces --------------------------------------------------------------
gguf=SmolLM2-135M-Instruct.Q4_1.gguf
if [[ -f "${root}/models/${gguf}" ]]; then
  here="${work}/here" there="${work}/there"
  mkdir -p "${here}/models" "${there}/.carry/gguf"
  ln -s "${root}/models/${gguf}" "${here}/models/${gguf}"
  check "split" bash -c "cd '${here}' && bash '${root}/scripts/device-model.sh' split"
  # 64 MiB a call, the tracked tree (~15 MB) in it: the first piece beside a light pack (< 16 MB).
  check "the first piece fits one call beside a pack" bash -c "[[ \$(stat -c %s '${here}/.carry/gguf/a') -le 34000000 ]]"
  check "the second piece fits one call" bash -c "[[ \$(stat -c %s '${here}/.carry/gguf/b') -le 44000000 ]]"
  cp "${here}/.carry/gguf/a" "${here}/.carry/gguf/b" "${here}/.carry/gguf/c" "${there}/.carry/gguf/"
  export KVLAB_MODEL_STASH="${work}/stash"
  check "stash a" bash -c "cd '${there}' && bash '${root}/scripts/device-model.sh' stash a"
  check "stash b" bash -c "cd '${there}' && bash '${root}/scripts/device-model.sh' stash b"
  checks=$((checks + 1))
  if (cd "${there}" && bash "${root}/scripts/device-model.sh" join >"${work}/early.txt" 2>&1); then
    failures=$((failures + 1))
    echo "FAIL: joined without piece c"
  fi
  check "stash c" bash -c "cd '${there}' && bash '${root}/scripts/device-model.sh' stash c"
  check "join" bash -c "cd '${there}' && bash '${root}/scripts/device-model.sh' join"
  check "the joined model equals the original" cmp "${there}/models/${gguf}" "${root}/models/${gguf}"
  # A damaged piece is refused by the hash, and nothing is left in models/.
  printf 'x' | dd of="${KVLAB_MODEL_STASH}/b" bs=1 seek=1000 conv=notrunc status=none
  rm -f "${there}/models/${gguf}"
  checks=$((checks + 1))
  if (cd "${there}" && bash "${root}/scripts/device-model.sh" join >"${work}/bad.txt" 2>&1); then
    failures=$((failures + 1))
    echo "FAIL: a damaged piece was joined"
  fi
  check "the refusal names the hash" grep -q "hash" "${work}/bad.txt"
  check "no model is left behind" bash -c "[[ ! -e '${there}/models/${gguf}' && ! -e '${there}/models/${gguf}.tmp' ]]"
else
  echo "device_scripts_test: ${root}/models/${gguf} absent: the split is not checked"
fi

echo "device_scripts_test: ${checks} checks, ${failures} failed"
[[ ${failures} -eq 0 ]]
