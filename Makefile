# imgcot — one entry point for setup, build, tests, demo and benchmarks.
# `make demo` and `make test` do every setup step they need on a fresh machine.

# The Python side (libtorch for tch, and the reference stacks the parity tests run) lives in a
# virtualenv keyed by the versions it holds, outside the checkout, so clones and CI reuse it.
TORCH_VERSION := 2.11.0
PY_KEY := torch$(TORCH_VERSION)-tf5-v1
VENV ?= $(HOME)/.cache/imgcot/venv-$(PY_KEY)
STAMP := $(VENV)/.imgcot-ready-$(PY_KEY)

export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
export IMGCOT_PYTHON := $(VENV)/bin/python

CARGO ?= cargo
BIN := target/release/imgcot-train

.PHONY: setup build test demo bench lint doctor clean-venv

setup: $(STAMP)

$(STAMP):
	@command -v python3 >/dev/null || { echo "python3 is needed to create $(VENV)"; exit 1; }
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet torch==$(TORCH_VERSION) 'transformers>=5,<6' safetensors numpy pillow
	$(VENV)/bin/python -c "import torch, transformers; assert torch.__version__.startswith('$(TORCH_VERSION)'), torch.__version__; print('torch', torch.__version__, 'transformers', transformers.__version__)"
	touch $@

build: setup
	$(CARGO) build --release

# The README's test command: unit, integration and parity tests (the parity tests run the Python
# references from the venv), plus formatting and clippy.
test: setup
	$(CARGO) fmt --check
	$(CARGO) test --release
	$(CARGO) clippy --release --all-targets -- -D warnings

demo: build
	$(BIN) dpo --iter 3 --guide parm

bench: build
	$(BIN) bench sampler

doctor: build
	$(BIN) doctor

lint: setup
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings

clean-venv:
	rm -rf $(VENV)
