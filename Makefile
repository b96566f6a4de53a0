# hotline-gateway: `make run` starts the daemon with the local defaults; `make test` runs the suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= config.toml

CHROMIUM ?= /usr/bin/chromium

.PHONY: run test check lint typecheck bench clean system-deps chromium

$(VENV)/bin/activate:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "hotline-gateway needs Python 3.11 or newer (found: $$($(PYTHON) --version))"; exit 2; }
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || \
	  { echo "Python's venv module is missing: apt-get install python3-venv"; exit 2; }
	@command -v g++ >/dev/null 2>&1 || \
	  { echo "a C++ compiler is needed to build pdqhash (image hashes): apt-get install g++"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(VENV)/bin/activate pyproject.toml
	$(PY) -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

run: $(VENV)/.installed
	$(VENV)/bin/hotline-gateway --config $(CONFIG) setup-demo
	exec $(VENV)/bin/hotline-gateway --config $(CONFIG) serve

# The console's browser tests drive Debian's chromium (Playwright cannot download its own here).
chromium:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium for the console's browser tests"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; \
	  else \
	    echo "the browser tests need chromium: sudo apt-get install chromium"; exit 2; \
	  fi; }

# One pytest worker per core (pytest-xdist); TEST_WORKERS=0 runs the suite in this process.
# loadgroup hands tests out one by one, but keeps those marked xdist_group(name) on one worker.
TEST_WORKERS ?= auto

test: $(VENV)/.installed-test chromium
	HOTLINE_CHROMIUM=$(CHROMIUM) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check gateway intake routing outbound tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

check: lint test

bench: $(VENV)/.installed-test
	$(PY) bench/smtp_intake.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .import_linter_cache *.egg-info
