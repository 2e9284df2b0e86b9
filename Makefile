# The two commands: `make audit` (the main job) and `make test`. Both create .venv if missing
# and install the pinned environment plus flaudit (with its C++/CUDA extension) first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.flaudit-installed
BUILD_INPUTS := setup.py constraints.txt requirements.txt $(wildcard csrc/*)

.PHONY: audit test bench install clean

audit: $(STAMP)
	$(BIN)/flaudit run --profile quick --out runs/default

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m pytest benches

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python $(BUILD_INPUTS)
	$(PIP) install -q -c constraints.txt -r requirements.txt
	$(PIP) install -q -c constraints.txt --no-build-isolation -e '.[flower]'
	touch $@

clean:
	rm -rf build *.egg-info flaudit/_C*.so
