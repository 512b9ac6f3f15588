# Flotilla: `make up` to run the suite, `make test` to test it. Both install what is missing.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STUBS := flotilla/_api/__init__.py
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: up down status logs test bench peer-suite farm farm-down install deps clean

up: install
	$(VENV)/bin/flotilla up

down:
	@if [ -x $(VENV)/bin/flotilla ]; then $(VENV)/bin/flotilla down; fi

status:
	$(VENV)/bin/flotilla status

logs:
	$(VENV)/bin/flotilla logs

test: install
	$(PY) -m pytest -q -p no:cacheprovider tests $(PYTEST_ARGS)

bench: install
	$(PY) -m bench $(BENCH_ARGS)

# a farm of N hosts on this machine, in network namespaces (docs/farm.md)
N ?= 3
farm: install
	$(PY) -m flotilla.testing.farm up $(N)

farm-down:
	@if [ -x $(PY) ]; then $(PY) -m flotilla.testing.farm down; fi

# containerd's own client test suite against Flotilla and containerd (tools/peer_suite.py)
peer-suite: install
	$(PY) tools/peer_suite.py $(PEER_ARGS)

install: deps $(VENV)/.installed $(STUBS) $(VENV)/bin/flotilla-shim
	@# bytecode for our own modules, as pip writes it for installed packages: an editable
	@# install has none, and with PYTHONDONTWRITEBYTECODE set (CI, these machines) every
	@# process would compile every module it imports, each time (0.15 s of each CLI command)
	@$(PY) -m compileall -q -j0 flotilla libs services deploy bench tests >/dev/null

deps:
	@bash tools/install-deps.sh

$(VENV)/.installed: pyproject.toml setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# the runtime's per-container supervisor, in C (see docs/runtime.md)
$(VENV)/bin/flotilla-shim: services/runtime/shim/flotilla-shim.c $(VENV)/.installed
	gcc -O2 -s -o $@ $<

$(STUBS): tools/gen_protos.py $(VENV)/.installed
	@# protoc warns about gogo imports that Python does not use; show everything else
	$(PY) tools/gen_protos.py 2>&1 | grep -v 'is unused' ; test $${PIPESTATUS[0]} -eq 0

clean:
	rm -rf $(VENV) flotilla/_api build *.egg-info
