# Shared checks for the CLI shell tests. Source it after setting `kvlab` (the binary) and
# `work` (a scratch folder); it keeps `failures` and `checks` counts.
failures=0
checks=0

fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

# expect CODE NEEDLE -- ARGS...: runs kvlab ARGS, checks the exit code and (if NEEDLE is not
# empty) that stdout+stderr contain NEEDLE; a failing command must print exactly one
# 'kvlab: error:' line on stderr.
expect() {
  local code="$1" needle="$2"
  shift 3
  checks=$((checks + 1))
  "${kvlab}" "$@" >"${work}/out.txt" 2>"${work}/err.txt"
  local rc=$?
  if [[ ${rc} -ne ${code} ]]; then
    fail "kvlab $* exited ${rc}, expected ${code}; stderr: $(head -c 400 "${work}/err.txt")"
    return
  fi
  if [[ -n "${needle}" ]] && ! grep -qF -- "${needle}" "${work}/out.txt" "${work}/err.txt"; then
    fail "kvlab $*: output lacks '${needle}': $(head -c 400 "${work}/out.txt" "${work}/err.txt")"
  fi
  if [[ ${code} -ne 0 ]]; then
    local lines
    lines=$(grep -c . "${work}/err.txt")
    if [[ ${lines} -ne 1 ]] || ! grep -q '^kvlab: error: ' "${work}/err.txt"; then
      fail "kvlab $*: error is not one 'kvlab: error:' line: $(cat "${work}/err.txt")"
    fi
  fi
}

# json_check FILE EXPR: the Python expression EXPR holds for the JSON in FILE (as `d`); counted
# but not checked where python3 is missing.
json_check() {
  checks=$((checks + 1))
  if ! command -v python3 >/dev/null; then return; fi
  python3 - "$1" "$2" <<'PY' || fail "JSON check '$2' on $1"
import json, sys
d = json.load(open(sys.argv[1]))
assert eval(sys.argv[2]), sys.argv[2]
PY
}
