# Two entry points for a fresh machine: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install -q --disable-pip-version-check -c constraints.txt

.PHONY: demo test attack install install-test clean

$(BIN)/aml: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[bank]'
	touch $@

$(VENV)/.test-installed: $(BIN)/aml
	$(PIP) -e '.[test]'
	@# headless Chromium renders `aml report` in tests/test_analyst.py (Debian package; root only)
	@if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -q && apt-get install -y -q chromium; fi
	touch $@

install: $(BIN)/aml
install-test: $(VENV)/.test-installed

demo: install
	$(BIN)/aml demo

test: install-test
	$(BIN)/python -m pytest -q

attack: install-test
	$(BIN)/python -m attacks.run

clean:
	rm -rf $(VENV) demo_out
