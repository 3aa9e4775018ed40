#!/usr/bin/env bash
# The out-of-tree plugin path, end to end, exactly as a user would take it:
#   cmake --install <build> --prefix <tmp>; build examples/plugin with find_package(kvlab);
#   kvlab policy check / replay --plugin <lib>.
# usage: plugin_test.sh BUILD_DIR SOURCE_DIR [CMAKE]
set -euo pipefail

build_dir="$1"
source_dir="$2"
cmake_bin="${3:-cmake}"
work="$(mktemp -d "${TMPDIR:-/tmp}/kvlab_plugin_test.XXXXXX")"
trap 'rm -rf "${work}"' EXIT

fail() { echo "plugin_test: FAIL: $*" >&2; exit 1; }

"${cmake_bin}" --install "${build_dir}" --prefix "${work}/prefix" >"${work}/install.log" ||
  { cat "${work}/install.log"; fail "cmake --install"; }
[[ -f "${work}/prefix/include/kvlab/core/policy.hpp" ]] || fail "core headers were not installed"
[[ -f "${work}/prefix/lib/cmake/kvlab/kvlabConfig.cmake" ]] || fail "the CMake package was not installed"
kvlab="${work}/prefix/bin/kvlab"
[[ -x "${kvlab}" ]] || fail "kvlab was not installed"

# Configure the example as its own project: only the installed package is visible to it.
"${cmake_bin}" -S "${source_dir}/examples/plugin" -B "${work}/plugin-build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="${work}/prefix" >"${work}/configure.log" 2>&1 ||
  { cat "${work}/configure.log"; fail "configuring examples/plugin against the installed package"; }
"${cmake_bin}" --build "${work}/plugin-build" -j2 >"${work}/build.log" 2>&1 ||
  { cat "${work}/build.log"; fail "building examples/plugin"; }
lib="${work}/plugin-build/libexample_lru.so"
[[ -f "${lib}" ]] || fail "the plugin library ${lib} was not built"

# Without the plugin the policy is unknown (usage error, exit 2).
set +e
"${kvlab}" policy check --policy example_lru >/dev/null 2>"${work}/err.txt"
rc=$?
set -e
[[ ${rc} -eq 2 ]] || fail "expected exit 2 for an unknown policy, got ${rc}"
grep -q "unknown policy 'example_lru'" "${work}/err.txt" || fail "unknown-policy message: $(cat "${work}/err.txt")"

"${kvlab}" policies --plugin "${lib}" >"${work}/policies.txt" || fail "kvlab policies --plugin"
grep -q "^example_lru" "${work}/policies.txt" || fail "example_lru is not listed by kvlab policies"
grep -q "min_share" "${work}/policies.txt" || fail "example_lru's parameters are not listed"

"${kvlab}" policy check --plugin "${lib}" --policy example_lru >"${work}/check.txt" 2>&1 ||
  { cat "${work}/check.txt"; fail "kvlab policy check --policy example_lru"; }
grep -q "PASS" "${work}/check.txt" || fail "policy check printed no PASS line"
if grep -q "FAIL" "${work}/check.txt"; then cat "${work}/check.txt"; fail "a conformance check failed"; fi

"${kvlab}" trace gen --workload mix --context-tokens 4096 --steps 24 --requests 2 --seed 5 \
  --out "${work}/small.h5" >/dev/null || fail "kvlab trace gen"
"${kvlab}" replay --plugin "${lib}" --policy example_lru:budget=0.25 --policy full \
  --trace "${work}/small.h5" --json >"${work}/replay.json" || fail "kvlab replay --plugin"
grep -q '"policy": "example_lru:' "${work}/replay.json" || fail "no example_lru result in $(cat "${work}/replay.json")"
grep -q '"requests": 2' "${work}/replay.json" || fail "replay did not cover both requests"

# A library that is not a plugin is an input error naming the file.
echo "not a library" >"${work}/bogus.so"
set +e
"${kvlab}" replay --plugin "${work}/bogus.so" --policy full --trace "${work}/small.h5" >/dev/null 2>"${work}/err.txt"
rc=$?
set -e
[[ ${rc} -eq 1 ]] || fail "expected exit 1 for a bad plugin, got ${rc}"
grep -q "bogus.so" "${work}/err.txt" || fail "bad-plugin message does not name the file: $(cat "${work}/err.txt")"

# A plugin that reuses a registered name is an input error, not a crash.
cat >"${work}/clash.cpp" <<'CPP'
#include "core/registry.hpp"
class Clash final : public kvlab::Policy {
 public:
  static constexpr const char* kDescription = "reuses the name of an in-tree policy";
  static constexpr bool kOracle = false;
  static std::vector<kvlab::ParamSpec> param_specs() { return {}; }
  explicit Clash(const kvlab::Params&) {}
  void on_step(const kvlab::StepContext&, kvlab::Plan&) override {}
};
KVLAB_REGISTER_POLICY(Clash, "full");
CPP
c++ -std=c++20 -shared -fPIC -I"${work}/prefix/include/kvlab" "${work}/clash.cpp" -o "${work}/libclash.so" \
  -L"${work}/prefix/lib" -lkvlab_core || fail "building the clashing plugin"
set +e
"${kvlab}" replay --plugin "${work}/libclash.so" --policy full --trace "${work}/small.h5" >/dev/null 2>"${work}/err.txt"
rc=$?
set -e
[[ ${rc} -eq 1 ]] || fail "expected exit 1 for a plugin reusing a name, got ${rc}: $(cat "${work}/err.txt")"
grep -q "registered twice" "${work}/err.txt" || fail "name-clash message: $(cat "${work}/err.txt")"

echo "plugin_test: OK"
