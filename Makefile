# The two commands: `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config/gateway.yaml

.PHONY: install run gateway test bench soak clean

install: $(STAMP)

# Reinstall only when the package metadata changed; the package itself is installed editable.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The demo: the gateway on the bundled default with the PBX and trunk recorder simulators making calls.
run: install
	$(BIN)/gateway demo --config $(CONFIG)

# The gateway alone, for real PBX links and recorders.
gateway: install
	$(BIN)/gateway run --config $(CONFIG)

# Real programs the tests drive (headless Chromium) are installed first when missing (.ci/ensure-packages).
test: install
	.ci/ensure-packages
	$(BIN)/pytest -q -n 4 --dist worksteal

# Each benchmark runs on its own: one that fails does not stop the others (the target fails at the end), and
# one whose tool is missing (wrk for the API) says so and is skipped.
BENCHMARKS := api_bench control_bench ingest_bench events_bench retention_bench

bench: install
	@failed=""; for name in $(BENCHMARKS); do \
		echo "== bench/$$name.py"; $(BIN)/python bench/$$name.py || failed="$$failed $$name"; \
	done; if [ -n "$$failed" ]; then echo "failed:$$failed"; exit 1; fi

# 100 kill -9 cycles on loopback while records stream in, then 10 rounds of link faults (docs/reliability.md); no
# new cycle after 15 minutes.
# Non-zero exit when anything the gateway acknowledged was lost, or a link was not up within its bound.
soak: install
	$(BIN)/python bench/soak.py --cycles 100 --time-limit-s 900 --link-faults 10

clean:
	rm -rf $(VENV) build *.egg-info
