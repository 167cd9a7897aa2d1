# The two commands a fresh machine needs are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test bench lint clean compile uncompile

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# Embedded defaults: bundled lists, data under ./var, DNS on 127.0.0.1:5300, admin on 127.0.0.1:8080.
run: $(STAMP)
	$(BIN)/safenest run --data ./var --dns 127.0.0.1:5300 --admin 127.0.0.1:8080

test: $(STAMP)
	$(BIN)/pytest

# Optional: the DNS path compiled by mypyc from the same .py files, and agent/dns/_udpio.c (UDP
# read and written a burst per system call): a cache miss costs about a quarter less CPU, a
# cache hit about half the instructions. Needs gcc and the Python headers, about 30 s and 460 MB
# here. The .py files stay the source and the fallback: compiled modules older than their
# sources are not used (agent/compiled_guard.py). `make uncompile` goes back to plain Python.
compile: $(STAMP)
	$(BIN)/pip install -q -e '.[compile]'
	$(BIN)/python setup_mypyc.py build_ext --inplace

uncompile:
	find agent -name '*.so' -delete
	rm -f agent/mypyc-build.json

# Bounded load tests on loopback, every benchmark module in turn (about 30 minutes); figures go
# to docs/performance.md. Each module has a time limit (SIGINT: it kills what it started); one
# that fails or misses a target does not stop the others, and makes the exit status 1.
# The list reaches the shell through the environment: bench.memory waits while a process whose
# command line names bench.run is running, and the loop's own command line must not.
BENCH_MODULES ?= bench.run:1800 bench.index_bench:300 bench.memory:1200 bench.feed:600 \
	bench.policy_bench:300 bench.querylog_bench:600
bench: export BENCH_MODULES := $(BENCH_MODULES)
bench: $(STAMP) compile
	@status=0; for entry in $$BENCH_MODULES; do \
		module=$${entry%%:*}; limit=$${entry##*:}; start=$$(date +%s); \
		echo "== make bench: $$module (limit $$limit s) at $$(date -u +%H:%M:%S) UTC"; \
		timeout -s INT -k 60 $$limit $(BIN)/python -m $$module || status=1; \
		echo "== $$module: $$(( $$(date +%s) - start )) s"; \
	done; exit $$status

lint: $(STAMP)
	$(BIN)/ruff check .

clean: uncompile
	rm -rf $(VENV) var build *.egg-info
