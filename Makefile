# Two entry points: `make train` (quick CPU run) and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Test files run in parallel worker processes (pytest-xdist), each file whole on one
# worker so that its module fixtures (shared reference runs) are built once.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

.PHONY: setup setup-gpu setup-tpu train train-full test test-fast lint bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,plots,keras]'
	touch $@

setup: $(BIN)/.installed

# The accelerator builds go into the project's own venv, after `setup` (which installs
# the CPU jax): installed before it, outside .venv, `make train` would never see them.
# JAX_CUDA=cuda12 for CUDA 12 drivers; the names are jax's extras (cuda13, cuda12, tpu).
JAX_CUDA ?= cuda13
setup-gpu: setup
	$(BIN)/pip install -q -U "jax[$(JAX_CUDA)]"

setup-tpu: setup
	$(BIN)/pip install -q -U "jax[tpu]"

train: setup  ## The :tiny preset (a few minutes on a laptop CPU), then a sample.
	$(BIN)/python -m charrnn_jax.main --config=experiments/shakespeare.py:tiny --workdir=runs/tiny
	$(BIN)/python -m charrnn_jax.sample --workdir=runs/tiny --prompt="ROMEO:" --length=300 --temperature=0.8

train-full: setup  ## The TF tutorial model (embed 256, GRU 1024): use an accelerator.
	$(BIN)/python -m charrnn_jax.main --config=experiments/shakespeare.py --workdir=runs/shakespeare

test: setup  ## With huge pages, as the CLIs run (charrnn_jax/runtime/host_memory.py).
	$(BIN)/ruff check .
	GLIBC_TUNABLES=glibc.malloc.hugetlb=1 $(PYTEST)

test-fast: setup  ## The fast tier: everything but the end-to-end runs marked slow.
	$(BIN)/ruff check .
	GLIBC_TUNABLES=glibc.malloc.hugetlb=1 $(PYTEST) -m "not slow"

bench: setup
	$(BIN)/python -m benchmarks.sampling
