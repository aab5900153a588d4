# Set-up and the two jobs of the README. Everything installs into a local virtual environment.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of this release is on the build machines' disk; an unpinned torch pulls CUDA.
TORCH_VERSION ?= 2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-torch-$(TORCH_VERSION)
PYTEST_WORKERS ?= 2

.PHONY: install test lint demo docs bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[dev,examples,docs]"
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m mypy

test: lint
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS)

# The documentation site (also built, strictly, by tests/docs/test_build.py).
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

# The benchmarks need the peer libraries: make bench installs torchdeq (the bench extra).
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

# The JFB paper's Table 2 on the embedded digits data: JFB vs Jacobian-based (CG) vs Neumann-5/10.
DEMO_ARGS ?= --epochs 20 --out results
demo: $(STAMP)
	$(BIN)/python -m examples.jfb_table2 $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis build *.egg-info
