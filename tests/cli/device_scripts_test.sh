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
           ./experiments/gpu/live_table.sh ./experiments/lsa/real/record_train.sh ./experiments/lsa/real/train_size.sh ./experiments/lsa/real/prompt_prior.sh \
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

  # ---- a visit in three calls (scripts/device-visit.sh): the pack and piece a, then b, then c
  fake="${work}/fake_pack" visit="${work}/visit_dir"
  mkdir -p "${fake}/build/bin" "${fake}/build/lib" "${fake}/scripts"
  echo '#!/bin/sh' >"${fake}/build/bin/kvlab"
  cp "${root}/scripts/device-model.sh" "${root}/scripts/fetch-model.sh" "${fake}/scripts/"
  echo "0123abc" >"${fake}/REVISION"
  for call in 1 2 3; do
    mkdir -p "${work}/call${call}/.carry/gguf" "${work}/out${call}"
    ln -s "${root}/scripts" "${work}/call${call}/scripts"
  done
  mkdir -p "${work}/call1/.carry/pack"
  tar cJf "${work}/call1/.carry/pack/kvlab.tar.xz" -C "${fake}" .
  cp "${here}/.carry/gguf/a" "${work}/call1/.carry/gguf/"
  cp "${here}/.carry/gguf/b" "${work}/call2/.carry/gguf/"
  cp "${here}/.carry/gguf/c" "${work}/call3/.carry/gguf/"
  for call in 1 2 3; do
    check "visit call ${call}" env OUT="${work}/out${call}" KVLAB_VISIT_DIR="${visit}" KVLAB_MODEL_STASH="${work}/visit_stash" \
      bash -c "cd '${work}/call${call}' && source scripts/device-visit.sh v && pwd >\"\$O/where.txt\" && el done"
    check "call ${call} packs its outputs" bash -c "tar xzf '${work}/out${call}/v.tgz' -C '${work}/out${call}' &&
      grep -qx '${visit}' '${work}/out${call}/v/where.txt' && grep -qx 0123abc '${work}/out${call}/v/revision.txt'"
  done
  check "the model is joined after the third piece" cmp "${visit}/models/${gguf}" "${root}/models/${gguf}"
  checks=$((checks + 1))
  if (cd "${work}/call2" && OUT="${work}/out2" KVLAB_VISIT_DIR="${work}/nowhere" bash -c "source scripts/device-visit.sh v" \
      >"${work}/nopack.txt" 2>&1); then
    failures=$((failures + 1))
    echo "FAIL: a visit without binaries went on"
  fi
  check "a visit without binaries says so" grep -q "holds no binaries" "${work}/nopack.txt"
else
  echo "device_scripts_test: ${root}/models/${gguf} absent: the split is not checked"
fi

echo "device_scripts_test: ${checks} checks, ${failures} failed"
[[ ${failures} -eq 0 ]]
