# cellseg-d2: one command each for install, lint, test and the end-to-end demo.
PYTHON ?= python3
DEMO_DIR ?= output/demo

.PHONY: install lint format test demo

install:  ## torch pair, detectron2 (built against it), then this package editable with [dev]
	PYTHON=$(PYTHON) bash tools/install.sh

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

test:
	$(PYTHON) -m pytest -q tests

demo:
	PYTHON=$(PYTHON) DEMO_DIR=$(DEMO_DIR) bash tools/demo.sh
