# One command sets up and runs each job on a fresh machine:
#   make demo   # venv + install + train a short VAE, evaluate (IWAE), export, write PNGs; offline
#               # too, with no variable set: MNIST is shipped in the package (docs/data.md)
#   make test   # venv + install + the whole test suite (every tier), then its JAX tier (what
#               # .ci/run calls)
#   make test-fast  # the unit and integration tiers, not slow (docs/testing.md): ~2 minutes
#   make test-unit  # the unit tier only
#   make test-jax   # the JAX tier: the backend_neutral tests under KERAS_BACKEND=jax
#   make lint   # venv + install + ruff check and ruff format --check (configured in pyproject.toml)
#   make docs   # venv + install + the API reference (pdoc) in docs/api/; fails on pdoc's warnings
# An active virtualenv ($VIRTUAL_ENV) is used as it is; otherwise .venv is created.

PYTHON_SYSTEM ?= python3
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := .venv
endif
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tfp_vae-installed
DEMO_DIR ?= runs/demo
DEMO_STEPS ?= 3000
API_DIR := docs/api

.PHONY: setup demo test test-fast test-unit test-jax lint docs recipes clean

$(PY):
	$(PYTHON_SYSTEM) -m venv $(VENV)

$(STAMP): setup.cfg setup.py pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade pip
	@# tfp-nightly replaced tensorflow-probability (setup.cfg); both are the module
	@# tensorflow_probability, so an older venv's copy goes first.
	$(PY) -m pip uninstall -y -q tensorflow-probability 2>/dev/null || true
	$(PY) -m pip install -e ".[test,jax]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) bin/train --model=vae --steps=$(DEMO_STEPS) --out_dir=$(DEMO_DIR) --resume --verbose=2
	$(PY) bin/evaluate --model_path=$(DEMO_DIR) --iw=1,10,100 --examples=1000 \
		--output_json=$(DEMO_DIR)/iwae.json
	$(PY) bin/export --model_path=$(DEMO_DIR) --export_dir=$(DEMO_DIR)/savedmodel --overwrite
	@echo "Demo done: $(DEMO_DIR)/samples.png, reconstructions.png, metrics.json, iwae.json, savedmodel/"

# Three workers on two cores: the suite is mostly single-threaded start-up and small batches
# (docs/testing.md: 15 min 20 s against 16 min 40 s with two, back to back).
# The JAX tier runs beside them, from the start (alone it keeps about 1.5 of the 2 cores busy;
# beside them, its gaps are filled), with its own temporary root; its report follows theirs.
test: setup
	@jaxlog=$$(mktemp); jaxtmp=$$(mktemp -d); \
	PYTEST_DEBUG_TEMPROOT=$$jaxtmp $(MAKE) --no-print-directory test-jax >$$jaxlog 2>&1 & jax=$$!; \
	$(PY) -m pytest -q -n 3 --dist loadfile tests; main=$$?; \
	wait $$jax; jaxrc=$$?; echo "== The JAX tier (make test-jax):"; cat $$jaxlog; \
	rm -rf $$jaxlog $$jaxtmp; test $$main = 0 && test $$jaxrc = 0

# The tiers are pytest marks (setup.cfg, tests/tiers.py); `make test` runs them all.
test-fast: setup
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" tests

test-unit: setup
	$(PY) -m pytest -q -n 2 --dist loadfile -m unit tests

# The JAX tier: the tests marked backend_neutral (setup.cfg), not slow, again with Keras on JAX.
# Only the files that hold such tests are collected (the others may set up TensorFlow's backend
# when imported).
JAX_TEST_FILES = $(shell grep -l 'mark.backend_neutral' tests/test_*.py)
test-jax: setup
	KERAS_BACKEND=jax $(PY) -m pytest -q -n 2 --dist loadfile -m "backend_neutral and not slow" \
		$(JAX_TEST_FILES)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The API reference of the library (tfp_vae and the modules in its __all__; the binaries'
# tfp_vae.cli is not a library API). Fails when pdoc fails or warns (a name in __all__ that does
# not resolve, an annotation it cannot parse, a module that does not import, ...) and when a
# docstring's `tfp_vae.<name>` links nowhere (pdoc leaves it unlinked: a renamed or removed name).
docs: setup
	rm -rf $(API_DIR)
	@log=$$(mktemp); \
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pdoc --docformat google -o $(API_DIR) tfp_vae >$$log 2>&1; \
	status=$$?; cat $$log; \
	if [ $$status -ne 0 ] || grep -qE '^(Warn|[A-Za-z]*Warning):' $$log; then \
		rm -f $$log; echo "make docs: pdoc failed or warned (above)" >&2; exit 1; fi; \
	rm -f $$log
	@broken=$$(grep -rhoE '<code>tfp_vae\.[A-Za-z0-9_.]+</code>' --include='*.html' $(API_DIR) \
		| sed -e 's/<[^>]*>//g' | sort -u); \
	if [ -n "$$broken" ]; then \
		echo "make docs: docstrings name what does not exist:" $$broken >&2; exit 1; fi
	@echo "API reference: $(API_DIR)/index.html ($$(du -sh $(API_DIR) | cut -f1))"

clean:
	rm -rf runs/demo .pytest_cache build dist
