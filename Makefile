# The README's two commands: `make quickstart` (main job on embedded defaults) and `make test`.
# Both create .venv and install the package on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Test processes (pytest-xdist). One test file stays in one process (--dist loadfile): its module
# fixtures (a trained model, a server) are built once. Each process has its own local Ray.
TEST_WORKERS ?= 2

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
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf outputs .pytest_cache
