# The two commands a fresh machine needs are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test bench lint clean

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

# Bounded load tests on loopback (about 10 minutes); figures go to docs/performance.md.
bench: $(STAMP)
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.index_bench
	$(BIN)/python -m bench.memory
	$(BIN)/python -m bench.feed

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) var build *.egg-info
