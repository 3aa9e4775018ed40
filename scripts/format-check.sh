#!/usr/bin/env bash
# Formatting and lint for kvlab's C++/CUDA sources (.clang-format, .clang-tidy).
#   scripts/format-check.sh format [FILES...]   rewrite files in place (default: every source)
#   scripts/format-check.sh check [BASE]        list files changed since BASE (default: the
#                                               merge base with origin/main, else HEAD~1) whose
#                                               formatting differs; exit 1 if any
#   scripts/format-check.sh lint [BUILD_DIR]    clang-tidy over the sources in compile_commands.json
# Without clang-format / clang-tidy it says so in one line and exits 0 (they are optional tools).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mode="${1:-check}"
shift || true
sources() { git ls-files '*.cpp' '*.hpp' '*.cu' '*.cuh' | grep -v '^tests/data/'; }
case "$mode" in
  format)
    command -v clang-format >/dev/null || { echo "format: clang-format is not installed"; exit 0; }
    if [[ $# -gt 0 ]]; then clang-format -i "$@"; else sources | xargs -r clang-format -i; fi
    ;;
  check)
    command -v clang-format >/dev/null || { echo "format check: clang-format is not installed; skipped"; exit 0; }
    base="${1:-$(git merge-base HEAD origin/main 2>/dev/null || git rev-parse HEAD~1 2>/dev/null || echo HEAD)}"
    changed=$(git diff --name-only --diff-filter=AM "$base" -- '*.cpp' '*.hpp' '*.cu' '*.cuh' 2>/dev/null)
    bad=()
    for f in $changed; do
      [[ -f "$f" ]] || continue
      if ! clang-format --style=file "$f" | cmp -s - "$f"; then bad+=("$f"); fi
    done
    if [[ ${#bad[@]} -gt 0 ]]; then
      echo "format check: ${#bad[@]} changed file(s) differ from .clang-format (scripts/format-check.sh format FILE):"
      printf '  %s\n' "${bad[@]}"
      exit 1
    fi
    echo "format check: $(echo "$changed" | grep -c . ) changed file(s) formatted"
    ;;
  lint)
    command -v clang-tidy >/dev/null || { echo "lint: clang-tidy is not installed"; exit 0; }
    build="${1:-build}"
    [[ -f "$build/compile_commands.json" ]] || { echo "lint: no $build/compile_commands.json (configure first)" >&2; exit 2; }
    sources | grep -E '\.cpp$' | grep -v '^tests/' | xargs -r clang-tidy -p "$build" --quiet
    ;;
  *) echo "usage: scripts/format-check.sh format|check|lint" >&2; exit 2 ;;
esac
