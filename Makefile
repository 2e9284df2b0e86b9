# The two commands: `make audit` (the main job) and `make test`. Both create .venv if missing
# and install the pinned environment plus flaudit (with its C++/CUDA extension) first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.flaudit-installed
BUILD_INPUTS := setup.py constraints.txt requirements.txt $(wildcard csrc/*)

.PHONY: audit test bench bench-quick bench-check bench-baseline bench-slow install clean

audit: $(STAMP)
	$(BIN)/flaudit run --profile quick --executor process --out runs/default

test: $(STAMP)
	$(BIN)/python -m pytest

# Benchmarks (benches/, README "Benchmarks"). Every run is saved under .benchmarks/<machine>/ and
# prints each group's ratios next to this machine's previous run; bench-check and bench-quick
# gate the ratios on benches/baseline.json (exit 1 on a regression); bench-baseline rewrites it.
# BENCH_ARGS passes pytest options, e.g. BENCH_ARGS="--bench-slow-kernel bin_solve=3".
BENCH_RUN := .benchmarks/last-run.json
BENCH := $(BIN)/python -m pytest benches --benchmark-autosave --benchmark-json=$(BENCH_RUN) $(BENCH_ARGS)
RATIOS := $(BIN)/python benches/ratios.py

bench: $(STAMP)
	$(BENCH)

bench-quick: $(STAMP)
	$(BENCH) -m quick
	$(RATIOS) check $(BENCH_RUN)

bench-check: $(STAMP)
	$(BENCH)
	$(RATIOS) check $(BENCH_RUN)

bench-baseline: $(STAMP)
	$(BENCH)
	$(RATIOS) baseline $(BENCH_RUN)

bench-slow: $(STAMP)
	$(BENCH) -m slow

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python $(BUILD_INPUTS)
	$(PIP) install -q -c constraints.txt -r requirements.txt
	$(PIP) install -q -c constraints.txt --no-build-isolation -e '.[flower]'
	# Flower's RDP accountant (flwr.serverapp.RdpAccountant, tests/test_flower_dp.py) needs dp-accounting,
	# which declares attrs<24 against our attrs 26 but runs with it: installed without its pins.
	$(PIP) install -q --no-deps dp-accounting==0.6.0 absl-py==2.5.1 dm-tree==0.1.10 wrapt==2.5.2
	touch $@

clean:
	rm -rf build *.egg-info flaudit/_C*.so
