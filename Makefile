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
# MiniHack, the oracle of lram's Dark-Room (tests/test_minihack_darkroom.py): nle pins gymnasium==1.2.0 (lram pins 1.4.0,
# on which it runs), so it is installed with --no-deps too; minihack 1.0.2 imports pkg_resources, which setuptools 82
# removed (torch needs >=77.0.3).  nle's declared pybind11 is a build need only.  `make setup MINIHACK=` skips it.
MINIHACK ?= nle==1.3.0 minihack==1.0.2 setuptools==80.10.2
# robosuite 1.5.2 (Composuite / MimicGen, issue 11) declares mink==0.0.5, which forces numpy<2 and serves only its
# whole-body IK; with --no-deps and its real run-time needs pinned (numba + llvmlite, termcolor; scipy, Pillow and cv2
# come with the other extras) it runs on numpy 2.  `make setup ROBOSUITE=` skips it.
ROBOSUITE ?= robosuite==1.5.2 numba==0.68.0 llvmlite==0.50.0 termcolor==3.3.0

.PHONY: setup test demo bench lint proto clean

setup: $(VENV)/.lram-installed

$(VENV)/.lram-installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	test -z "$(PROCGEN)" || $(BIN)/python -m pip install -q --no-deps $(PROCGEN)
	test -z "$(MINIHACK)" || $(BIN)/python -m pip install -q --no-deps $(MINIHACK)
	test -z "$(ROBOSUITE)" || $(BIN)/python -m pip install -q --no-deps $(ROBOSUITE)
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
