# make run   : create .venv, install, train the default job on the embedded digits set, print a results table
# make test  : create .venv if missing, run the fast test tier
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-slow test-gpu test-slurm bench lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch/torchvision pinned to the builds this machine's pip installs from local files
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m launch

# pytest exits 5 when it collects nothing: treat that as a failure so CI never passes on nothing
test: $(STAMP)
	@$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow --timeout=3600

# starts (installing if needed) a one-node SLURM on localhost, then runs the tests marked slurm
test-slurm: $(STAMP)
	scripts/slurm-local.sh start
	$(PY) -m pytest -q -m slurm

bench: $(STAMP)
	$(PY) bench/engine.py

# issue 14: every measured figure on one CUDA GPU in one table, at most 7 minutes (bench/gpu.py; ARGS="--out gpu.json",
# ARGS="--smoke --device cpu" runs anywhere)
.PHONY: bench-gpu
bench-gpu: $(STAMP)
	$(PY) -m bench.gpu $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
