# One command sets up and runs the main job (`make demo`), one sets up and runs the tests (`make test`).
# torch is installed first and pinned (the CPU wheel on our machines), so nothing pulls a CUDA build.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
EXTRAS ?= dev

.PHONY: setup test demo bench lint clean

setup: $(VENV)/.lram-installed

$(VENV)/.lram-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

test: setup
	$(BIN)/python -m pytest -n 2 tests

# the main job; until the end-to-end demo exists it is the latency benchmark
demo: bench

bench: setup
	$(BIN)/lram bench --out benchmarks/out/latency.json

lint: setup
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) benchmarks/out .pytest_cache
