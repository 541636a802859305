# scalelab — run as root on Debian. `make scenarios` is the main job, `make test` the tests.
GUESTS ?= 64
PYTEST ?= .venv/bin/python -m pytest
SCALELAB ?= .venv/bin/scalelab

.PHONY: setup image scenarios test lint unit bench clean

setup:
	@bash scripts/setup.sh

image: setup
	$(SCALELAB) image build

# The main job: everything set up, the image built if not cached, the scenarios run.
scenarios: image
	$(PYTEST) scenarios/ --guests=$(GUESTS); status=$$?; \
	echo "report: $$(readlink -f reports/latest)/index.html"; exit $$status

lint: setup
	.venv/bin/ruff check harness tests scenarios bench conftest.py
	.venv/bin/mypy

# The project's own tests (CI runs this).
test: lint
	$(PYTEST) tests/ -p no:cacheprovider

bench: image
	.venv/bin/python bench/run_all.py

clean:
	$(SCALELAB) clean
