# One command sets up and runs the main job (`make demo`), one sets up and runs the tests (`make test`).
# torch is installed first and pinned (the CPU wheel on our machines), so nothing pulls a CUDA build.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
EXTRAS ?= dev
# Procgen (procgen2 + gym3) declares numpy<2 but runs on numpy 2 through gym3, so it is installed with --no-deps
# (pip extras cannot say that); `make setup PROCGEN=` skips it.  imageio is imported by gym3 at import time.
PROCGEN ?= procgen2==0.10.7 gym3==0.3.3 gym==0.26.2 cffi==1.17.1 pycparser==2.23 imageio==2.38.1

.PHONY: setup test demo bench lint proto clean

setup: $(VENV)/.lram-installed

$(VENV)/.lram-installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	test -z "$(PROCGEN)" || $(BIN)/python -m pip install -q --no-deps $(PROCGEN)
	touch $@

test: setup
	$(BIN)/python -m pytest -n 2 tests

# the main job: data, training, scores and latency on this CPU in minutes (demo/REPORT.md)
demo: setup
	$(BIN)/lram demo --out demo

bench: setup
	$(BIN)/lram bench --out benchmarks/out/latency.json

lint: setup
	$(BIN)/ruff check src tests benchmarks

# regenerate the gRPC stubs of the policy server from src/lram/serving/proto/policy.proto
proto: setup
	cd src && ../$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. lram/serving/proto/policy.proto

clean:
	rm -rf $(VENV) benchmarks/out .pytest_cache demo
