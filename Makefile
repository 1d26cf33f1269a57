# The two README commands. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean browser

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

# The evidence-viewer test drives a real headless Chromium. Install it where we can (root with
# apt-get, e.g. a Debian container); never fail here: without it that test skips and says why.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
		|| command -v google-chrome >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium for the browser test (apt-get)"; \
		( DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
		  || ( apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 ) ) \
		|| echo "note: could not install chromium; the browser test will be skipped"; \
	else echo "note: no chromium (and no root apt-get to install it); the browser test will be skipped"; fi

# pytest exits 5 when it collects no tests; that is not a failure of the suite.
test: $(STAMP) browser
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
