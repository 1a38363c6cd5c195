# The course's commands. `make lab` opens the course; `make test` checks all of it.
# On machines where a plain `torch` requirement would pull a multi-GB CUDA build, pin it:
#   make test TORCH_SPEC=torch==2.13.0      (CI does this in .ci/run)

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch
PY := $(VENV)/bin/python
# Which extras of pyproject.toml to install; CI adds `ui` (the real-browser test).
EXTRAS ?= lab,dev
comma := ,
STAMP := $(VENV)/.kdlib-installed-$(subst $(comma),-,$(EXTRAS))
# Stored notebook outputs are compared digit for digit, and float sums depend on how many
# threads split them: tests and `make notebooks` use 2 threads (CI's 2 cores) on any machine.
NB_ENV := KDLIB_PROGRESS=0 KDLIB_DEVICE=cpu MPLBACKEND=module://matplotlib_inline.backend_inline PYTHONHASHSEED=0 OMP_NUM_THREADS=2
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg

.PHONY: setup lab test test-fast notebooks bench results exercises lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (kdlib course)"
	touch $(STAMP)

# Extra JupyterLab flags, e.g. LAB_FLAGS="--no-browser --port 8890" (tests use this).
LAB_FLAGS ?=

lab: setup
	$(VENV)/bin/jupyter lab --allow-root --ServerApp.root_dir="$(CURDIR)" $(LAB_FLAGS) notebooks/00_setup_and_data.ipynb

# nbval compares with outputs made from freshly trained teachers (see `notebooks`); if a
# teacher in your cache is stale, run `KDLIB_CACHE=$(mktemp -d) make test`, as .ci/run does.
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(NB_ENV) $(PY) -m pytest -p no:cacheprovider -q -rs tests
	$(NB_ENV) $(PY) -m pytest -p no:cacheprovider -q $(NBVAL) notebooks

test-fast: setup
	$(NB_ENV) $(PY) -m pytest -q -x tests -m "not slow"

# Teachers are trained afresh into a throw-away cache, as on a clean CI machine: a teacher
# cached earlier (another torch, other threads) would bake its own digits into the outputs.
notebooks: setup
	cache=$$(mktemp -d) && $(NB_ENV) KDLIB_CACHE=$$cache $(PY) -m kdlib.notebooks notebooks/*.ipynb; \
	rc=$$?; rm -rf "$$cache"; exit $$rc

# Student versions of the exercises (exercises/NN_*.ipynb) from their sources (answer keys).
exercises: setup
	$(PY) -m kdlib.exercises

bench: setup
	$(PY) -m benchmarks

results: setup
	$(PY) -m kdlib.results all

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache
