PYTHON ?= python
MODEL_DIR := src/fat5/models/flash_t5
CHECK_DIRS := src tests utils benchmarks examples

.PHONY: install test demo quality style

install:
	$(PYTHON) -m pip install --quiet -e ".[triton,testing]"

test: install
	$(PYTHON) utils/fetch_transformers_tests.py
	TRITON_INTERPRET=1 $(PYTHON) -m pytest -n 2 --dist loadfile tests

demo: install
	$(PYTHON) examples/demo.py

quality:
	ruff check $(CHECK_DIRS)
	ruff format --check $(CHECK_DIRS)
	mlinter $(MODEL_DIR)

style:
	ruff check --fix $(CHECK_DIRS)
	ruff format $(CHECK_DIRS)
