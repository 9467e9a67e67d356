# One command sets up and runs each job on a fresh machine:
#   make demo   # venv + install + train a short VAE, evaluate (IWAE), export, write PNGs
#   make test   # venv + install + the test suite
#   make lint   # venv + install + ruff check and ruff format --check (configured in pyproject.toml)
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

.PHONY: setup demo test lint recipes clean

$(PY):
	$(PYTHON_SYSTEM) -m venv $(VENV)

$(STAMP): setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) bin/train --model=vae --steps=$(DEMO_STEPS) --out_dir=$(DEMO_DIR) --resume --verbose=2
	$(PY) bin/evaluate --model_path=$(DEMO_DIR) --iw=1,10,100 --examples=1000 \
		--output_json=$(DEMO_DIR)/iwae.json
	$(PY) bin/export --model_path=$(DEMO_DIR) --export_dir=$(DEMO_DIR)/savedmodel --overwrite
	@echo "Demo done: $(DEMO_DIR)/samples.png, reconstructions.png, metrics.json, iwae.json, savedmodel/"

test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile tests

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf runs/demo .pytest_cache
