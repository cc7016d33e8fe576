# The README's two commands: `make quickstart` (main job on embedded defaults) and `make test`.
# Both create .venv and install the package on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Test processes (pytest-xdist), e.g. `make test TEST_WORKERS=4` on a larger machine. One test file
# stays in one process (--dist loadfile), so its module fixtures (a trained model, a server) are built
# once; each process starts its own Ray head (tests/conftest.py). Default 1 (serial): on 2 cores the
# end-to-end tests are CPU-bound, and 2 processes double the load the timing-bounded fault tests run under.
TEST_WORKERS ?= 1
XDIST := $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile,)

.PHONY: setup quickstart test test-fast clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -e '.[test]'
	touch $@

setup: $(VENV)/.installed

quickstart: setup
	$(PY) jobs/tune_steps.py --config configs/quickstart.yaml

test: setup
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf outputs .pytest_cache
