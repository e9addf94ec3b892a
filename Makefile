# meshbox: the README's two commands are `make demo` and `make test`.
# Both bootstrap what they need: Debian packages (as root) and a venv in .venv/.

SHELL := /bin/bash
# Debian's interpreter, not a pyenv shim: the proxy runs as UID 1337 and must be able to read it.
SYSTEM_PYTHON ?= /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
DISTS := protos init injector proxy agent discovery cluster ctl
PYTEST_ARGS ?=

.PHONY: help bootstrap venv test lint proto demo bench fuzz images kind-demo clean

help:
	@echo "make demo    run the tutorial on a local mesh (network namespaces; needs root)"
	@echo "make test    run the whole test suite (lint, type check, unit, integration, e2e)"
	@echo "make bench   run the benchmarks and print a table of ratios"
	@echo "make fuzz    fuzz a real meshbox-proxy over HTTP/1.1 and HTTP/2 (FUZZ_N=100000 requests, half each; FUZZ_SEED=1) and print the counts and findings"
	@echo "make proto   regenerate meshbox.api from protos/"
	@echo "make lint    ruff + mypy"
	@echo "make images  build the container images (podman, else docker; IMAGES_ARGS=--local-base offline)"
	@echo "make kind-demo  the tutorial on a kind cluster (docker + kind; not run by CI)"

bootstrap:
	@scripts/bootstrap-system.sh

# Build tools come first, so the editable installs build with them (no isolated build environments):
# meshbox-proxy compiles its hot path with mypyc from requirements-dev.txt (see proxy/setup.py).
$(VENV)/.installed: $(foreach d,$(DISTS),$(d)/pyproject.toml) requirements-dev.txt
	@test -x $(SYSTEM_PYTHON) || { echo "need $(SYSTEM_PYTHON) (apt-get install python3 python3-venv)"; exit 1; }
	@echo "installing meshbox and its tools into $(VENV)/ (log: $(VENV)/install.log)"
	@$(SYSTEM_PYTHON) -m venv $(VENV)
	@{ $(PY) -m pip install --disable-pip-version-check --upgrade pip wheel 'setuptools>=68' && \
	   $(PY) -m pip install --disable-pip-version-check -r requirements-dev.txt && \
	   $(PY) -m pip install --disable-pip-version-check --no-build-isolation $(foreach d,$(DISTS),-e ./$(d)); \
	} > $(VENV)/install.log 2>&1 || { tail -n 30 $(VENV)/install.log; echo "pip failed: see $(VENV)/install.log"; exit 1; }
	@touch $@ $(VENV)/.proxy-compiled

# The proxy's compiled modules sit beside their sources and shadow them: rebuild when a source changes.
$(VENV)/.proxy-compiled: $(VENV)/.installed proxy/setup.py $(wildcard proxy/meshbox/proxy/*.py proxy/meshbox/proxy/*.c proxy/meshbox/proxy/*.h proxy/meshbox/proxy/codec/*.py)
	@echo "compiling the proxy's hot path (mypyc; log: $(VENV)/install.log)"
	@$(PY) -m pip install --disable-pip-version-check --no-deps --no-build-isolation -e ./proxy >> $(VENV)/install.log 2>&1 \
	  || { tail -n 30 $(VENV)/install.log; echo "compiling the proxy failed: see $(VENV)/install.log"; exit 1; }
	@touch $@

venv: bootstrap $(VENV)/.installed $(VENV)/.proxy-compiled

proto: venv
	$(PY) scripts/gen_protos.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy protos/meshbox/api $(foreach d,init injector proxy agent discovery cluster ctl,$(d)/meshbox) bench fuzz

test: venv lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: venv
	$(VENV)/bin/meshctl demo

bench: venv
	$(PY) bench/run.py

# The external fuzz of the proxy (fuzz/, beside bench/), HTTP/1.1 then HTTP/2 (h2c), FUZZ_N requests in all
# (FUZZ_ARGS="--h2-share 0.3" or "--protocol h2" to change the split); CI runs a smaller one in proxy/tests/test_fuzz.py.
FUZZ_N ?= 100000
FUZZ_SEED ?= 1
fuzz: venv
	$(PY) -m fuzz --requests $(FUZZ_N) --seed $(FUZZ_SEED) $(FUZZ_ARGS)

# Container images (podman, else docker). On a host without registry access:
#   make images IMAGES_ARGS=--local-base
images: venv
	deploy/images/build.sh $(IMAGES_ARGS)

# The tutorial on a kind cluster (needs docker and kind; not run by CI).
kind-demo: venv
	deploy/kind/demo.sh

clean:
	rm -rf $(VENV)
