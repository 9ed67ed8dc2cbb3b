# make install installs the package (pip install -e .) with its tests' tools into .venv
# make train   installs into .venv and trains dbl_conv_relu on real MNIST (60 epochs)
# make test    installs into .venv and runs the tests
# make bench   installs into .venv and runs the conv benchmark
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXPERIMENT ?= dbl_conv_relu
WORKDIR ?= runs/$(EXPERIMENT)
ARGS ?=
# pytest-xdist worker processes for `make test` (0: one process, no workers)
TEST_WORKERS ?= 2

.PHONY: install train test bench

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

train: install
	$(BIN)/python run.py --config=experiments/$(EXPERIMENT).py --workdir=$(WORKDIR) $(ARGS)

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist=worksteal tests $(ARGS)

bench: install
	$(BIN)/python benchmarks/conv_impl.py $(ARGS)
