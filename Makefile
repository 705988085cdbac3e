# cellseg-d2: one command each for the demo and the tests; both install what is missing first.
PYTHON ?= python3
DEMO_DIR ?= output/demo

.PHONY: install ensure-installed lint format test demo

install:  ## always: torch pair, detectron2 (built against it), this package editable with [dev]
	PYTHON=$(PYTHON) bash tools/install.sh

ensure-installed:  ## install only when the stamp says something may be missing (~0.1 s if not)
	@PYTHON=$(PYTHON) bash tools/ensure_installed.sh

lint: ensure-installed
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format: ensure-installed
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

test: ensure-installed
	$(PYTHON) -m pytest -q tests

demo: ensure-installed
	PYTHON=$(PYTHON) DEMO_DIR=$(DEMO_DIR) bash tools/demo.sh
