PYTHON ?= python
MODEL_DIR := src/fat5/models/flash_t5
CHECK_DIRS := src tests utils benchmarks examples

.PHONY: install test demo tour quality style

install:
	$(PYTHON) -m pip install --quiet -e ".[triton,testing]"

test: install
	$(PYTHON) utils/fetch_transformers_tests.py
	TRITON_INTERPRET=1 $(PYTHON) -m pytest -n 2 --dist loadfile tests

# The main job: pretrain (cached) -> finetune QA with Trainer -> evaluate -> save -> reload in a fresh process.
demo: install
	TOKENIZERS_PARALLELISM=false $(PYTHON) examples/demo.py

# A quick first tour: every head and generate on a random model, save, reload through the Auto classes.
tour: install
	$(PYTHON) examples/tour.py

quality:
	ruff check $(CHECK_DIRS)
	ruff format --check $(CHECK_DIRS)
	mlinter $(MODEL_DIR)
	$(PYTHON) utils/check_repo.py

style:
	ruff check --fix $(CHECK_DIRS)
	ruff format $(CHECK_DIRS)
