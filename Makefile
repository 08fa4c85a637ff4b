# querycache — every target works alone on a fresh machine: the first use
# creates .venv and installs the project into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test bench lint servers clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres]'
	touch $(STAMP)

## Run the sample workload plain and through querycache (SQLite + memory tier).
demo: $(STAMP)
	$(BIN)/querycache demo

## Make sure redis-server and PostgreSQL exist, then run the whole suite: two
## xdist workers (each starts its own servers), then the `serial` tests alone,
## so that their wall-clock bounds are not measured against the other worker.
test: $(STAMP) servers
	$(BIN)/python -m pytest -q -n 2 -m "not serial"
	$(BIN)/python -m pytest -q -m serial

## Benchmarks: side-by-side ratios, printed (numbers go to docs/benchmarks.md).
bench: $(STAMP) servers
	$(BIN)/python -m benchmarks

## Write-through refresh: read hit ratio with refresh_on_write off and on.
bench-refresh: $(STAMP) servers
	$(BIN)/python -m benchmarks.bench_refresh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check querycache

servers:
	@bash .ci/ensure-servers

clean:
	rm -rf $(VENV) sample_db/data .pytest_cache .ruff_cache

## Soak: the sample workload on PostgreSQL + Redis, several processes, Redis
## restarts/pauses and pg_terminate_backend, verify=1.0; fails on a mismatch,
## an error to the caller or memory growth. SOAK_SECONDS=60 make soak for a short one.
SOAK_SECONDS ?= 600
SOAK_PROCESSES ?= 3
.PHONY: soak
soak: $(STAMP) servers
	SOAK_SECONDS=$(SOAK_SECONDS) SOAK_PROCESSES=$(SOAK_PROCESSES) $(BIN)/python -m benchmarks.soak
