# make run   : create .venv, install, train the default job on the embedded digits set, print a results table
# make test  : create .venv if missing, run the fast test tier
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-slow test-oldest test-gpu test-slurm bench lint format clean

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

# The oldest torch this machine's pip installs, in its own venv, on the parts that use torch most closely (the
# optimizers' multi-tensor ops, the Trainer, checkpoints, SEDONA's pipeline): PyPI's CUDA build of torch 2.13.0 and
# torchvision 0.28.0, which run on a CPU too ("===": the local 2.13.0+cpu torch has no CPU torchvision to match).
OLDEST_VENV := .venv-oldest
OLDEST_TESTS := tests/adatune tests/ecco tests/sedona tests/common/test_engine.py tests/common/test_trainer.py \
	tests/common/test_checkpoint.py tests/common/test_peer_optimizers.py tests/ecc/test_admm.py tests/common/test_memory.py

$(OLDEST_VENV)/.installed: pyproject.toml
	test -x $(OLDEST_VENV)/bin/python || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install --quiet "torch===2.13.0" "torchvision===0.28.0"
	$(OLDEST_VENV)/bin/python -m pip install --quiet -e ".[dev]"
	$(OLDEST_VENV)/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

test-oldest: $(OLDEST_VENV)/.installed
	$(OLDEST_VENV)/bin/python -m pytest -q $(OLDEST_TESTS)

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
	rm -rf $(VENV) $(OLDEST_VENV) .pytest_cache .ruff_cache
