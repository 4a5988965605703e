# Plain entry points. Each target creates and uses .venv on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
# DeepSpeed JIT-builds a C++ op on the CPU on first use (~50 s): share one build across runs.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export PYTHONUNBUFFERED := 1

.PHONY: install test demo clean

install: $(VENV)/.installed

# torch first, from the local CPU wheel: a bare requirement would pull GBs of CUDA packages.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

test: install
	$(PY) -m pytest -q -ra tests

demo: install
	bash launch/demo.sh

clean:
	rm -rf $(VENV) .cache runs
