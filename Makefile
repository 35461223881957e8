# Two commands do everything on a fresh machine:
#   make demo   creates the environment, then trains -> evaluates -> predicts on cats vs dogs
#   make test   creates the environment, then runs the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: env demo-env browser js lint test test-fast demo bench clean

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	# Test-only reference: Keras 2 (tf_keras) to compare legacy H5 loading against.
	# tf-keras depends on the `tensorflow` distribution, which tensorflow-cpu provides: no deps.
	$(BIN)/pip install -q --no-deps "tf-keras>=2.16,<2.22"
	rm -f $(VENV)/.installed-*
	touch $@

# Headless Chromium for the report and web-page tests (Debian package; skipped when present).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The real TF.js runtimes of the TF.js tests (tests/test_tfjs*.py), from npm into an ignored folder.
# Versions pinned: @teachablemachine/image 0.8.5 declares @tensorflow/tfjs 1.3.1 as its exact peer.
NPM_DIR      := .cache/npm
NPM_PACKAGES := @tensorflow/tfjs@1.3.1 @teachablemachine/image@0.8.5
NPM_STAMP    := $(NPM_DIR)/.installed-$(shell echo $(NPM_PACKAGES) | cksum | cut -d' ' -f1)

js: $(NPM_STAMP)

$(NPM_STAMP):
	mkdir -p $(NPM_DIR)
	test -f $(NPM_DIR)/package.json || echo '{"private": true}' > $(NPM_DIR)/package.json
	cd $(NPM_DIR) && npm install --no-audit --no-fund --ignore-scripts --save-exact $(NPM_PACKAGES)
	rm -f $(NPM_DIR)/.installed-*
	touch $@

lint: env
	$(BIN)/ruff check .

# Two workers: much of the suite waits on child processes, a browser or TensorFlow's import, so two overlap on
# 2 cores: 17 min 34 s against 25 min 57 s in one process (tests/conftest.py groups the tests). 0: one process.
PYTEST_WORKERS ?= 2

test: env browser js lint
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-fast: env
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# The demo needs only the base dependencies (train, evaluate, predict, report): no dev stack.
DEMO_STAMP := $(VENV)/.demo-installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

demo-env: $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	rm -f $(VENV)/.demo-installed-*
	touch $@

demo: demo-env
	$(BIN)/python -m retreino.demo

bench: env
	for b in bench/*.py; do \
	  if grep -q "^# make bench: needs arguments" $$b; then echo "== $$b: measures a given run or draw, skipped (usage: its docstring)"; continue; fi; \
	  echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
