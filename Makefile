# The course's commands. `make lab` opens the course; `make test` checks all of it.
# On machines where a plain `torch` requirement would pull a multi-GB CUDA build, pin it:
#   make test TORCH_SPEC=torch==2.13.0      (CI does this in .ci/run)

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch
PY := $(VENV)/bin/python
# Which extras of pyproject.toml to install; `ui` is the real-browser test (it also needs
# Chromium; without it `make test` says it skipped that test and how to enable it).
EXTRAS ?= lab,dev,ui
comma := ,
STAMP := $(VENV)/.kdlib-installed-$(subst $(comma),-,$(EXTRAS))
# Float sums depend on how many threads split them, so the course runs with one thread count
# everywhere: the lab's kernel, the tests and `make notebooks` (CI's 2 cores).
THREADS := 2
# So do the CPU's vector instructions: PyTorch, oneDNN and MKL pick AVX-512 where the CPU has
# it, and those kernels add up floats in another order than AVX2's. On x86-64 the course pins
# AVX2 (every x86-64 CPU of the last decade has it), so AVX2 and AVX-512 machines agree.
ifneq ($(filter x86_64 amd64 AMD64,$(shell uname -m)),)
ISA_ENV := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
endif
COURSE_ENV := OMP_NUM_THREADS=$(THREADS) $(ISA_ENV)
NB_ENV := KDLIB_PROGRESS=0 KDLIB_DEVICE=cpu MPLBACKEND=module://matplotlib_inline.backend_inline PYTHONHASHSEED=0 $(COURSE_ENV)
# Notebook checks, two tiers (see "What `make test` checks" in the README):
#   make test        any machine, any torch: cells tagged `nbval-check-output` (exact outputs)
#                    are compared, and every cell runs, so the asserts that check each claim run;
#   make test-strict the reference environment (CI: pinned torch, 2 threads, fresh teachers):
#                    every stored output is compared digit for digit, as a regression guard.
NBVAL := --nbval-lax --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg
NBVAL_STRICT := --nbval --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg

.PHONY: setup lab test test-strict test-fast notebooks bench results exercises lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (kdlib course)" \
		$(foreach kv,$(COURSE_ENV),--env $(subst =, ,$(kv)))
	touch $(STAMP)

# Extra JupyterLab flags, e.g. LAB_FLAGS="--no-browser --port 8890" (tests use this).
LAB_FLAGS ?=

lab: setup
	$(COURSE_ENV) $(VENV)/bin/jupyter lab --allow-root --ServerApp.root_dir="$(CURDIR)" $(LAB_FLAGS) notebooks/00_setup_and_data.ipynb

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(NB_ENV) $(PY) -m pytest -p no:cacheprovider -q -rfEs tests
	$(NB_ENV) $(PY) -m pytest -p no:cacheprovider -q $(NBVAL) notebooks

# The stored outputs were made with CI's pinned torch and freshly trained teachers (see
# `notebooks`); elsewhere the measured numbers differ in their last digits, by design.
test-strict: setup
	$(NB_ENV) $(PY) -m pytest -p no:cacheprovider -q $(NBVAL_STRICT) notebooks

test-fast: setup
	$(NB_ENV) $(PY) -m pytest -q -x tests -m "not slow"

# Teachers are trained afresh into a throw-away cache, as on a clean CI machine: a teacher
# cached earlier (another torch, other threads) would bake its own digits into the outputs.
# Some of them only: make notebooks NOTEBOOKS="notebooks/07_*.ipynb notebooks/08_*.ipynb"
NOTEBOOKS ?= notebooks/*.ipynb
notebooks: setup
	cache=$$(mktemp -d) && $(NB_ENV) KDLIB_CACHE=$$cache $(PY) -m kdlib.course.notebooks $(NOTEBOOKS); \
	rc=$$?; rm -rf "$$cache"; exit $$rc

# Student versions of the exercises (exercises/NN_*.ipynb) from their sources (answer keys).
exercises: setup
	$(PY) -m kdlib.course.exercises

bench: setup
	$(PY) -m benchmarks

results: setup
	$(PY) -m kdlib.course.results all

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache
