# A thin wrapper: CMake is the build. `make demo` and `make test` work on a fresh Debian 12
# (as root, or with sudo for the package step); see README.md.
BUILD_DIR ?= build
BUILD_TYPE ?= Release
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=

.PHONY: all setup configure build demo test model bench install clean format lint format-check

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
# would starve the other on a 2-core machine.
test: build
	cd $(BUILD_DIR) && OMP_WAIT_POLICY=passive ctest --output-on-failure -j2

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
