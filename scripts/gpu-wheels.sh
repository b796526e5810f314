#!/usr/bin/env bash
# Prepare .whl/ (git-ignored): the project's pure-Python dependencies as wheels for a bare GPU machine whose Python
# (3.12) already has torch, numpy, scikit-learn, matplotlib, pandas, PyYAML and tqdm but nothing can be downloaded.
# Then, on that machine, from the repository root:
#   python3 -m pip install -q --no-index --no-deps --target .site .whl/*.whl && export PYTHONPATH=$PWD:$PWD/.site
#   python3 -m bench.gpu; python3 -m pytest -m gpu
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p .whl
# versions: those the project's CI installs here (pip freeze of .venv)
pins=$("$PY" -m pip freeze | grep -i -E '^(hydra-core|omegaconf|submitit|hydra-submitit-launcher|torch-pruning|torch-lr-finder|torch-optimizer|pytorch-ranger|cloudpickle|optuna|colorlog|alembic|sqlalchemy|mako|schedulefree|pytorch[-_]optimizer|pytest-timeout|typing[-_]extensions)==' || true)
for pin in $pins; do
    # a package without a pure-Python wheel (none needed by the GPU checks so far) is reported, not fatal
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform any -d .whl "$pin" \
        || echo "gpu-wheels: no pure-Python wheel for $pin" >&2
done
# antlr4-python3-runtime (hydra's parser) is an sdist only: build its wheel here
antlr=$("$PY" -m pip freeze | grep -i '^antlr4-python3-runtime==')
"$PY" -m pip wheel -q --no-deps -w .whl "$antlr"
ls .whl
