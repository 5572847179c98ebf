# The README's two commands: `make run` (set up, then the daemon on config.toml) and `make test`
# (set up, then lint and the test suite). Both install what they need, apt packages included.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# The scoring server (linewatch serve) has an environment of its own: PyTriton pins numpy below 2, and its
# bundled Python stub needs Debian's python3.11 (3.11.2); under pyenv's 3.11.7 it fails in multiprocessing's
# resource tracker. docs/serving.md.
SERVE_PYTHON ?= /usr/bin/python3.11
SERVE_VENV ?= .venv-serve
# mosquitto and postgresql: the tests start their own throwaway broker and database server;
# openssl makes the certificates of the TLS broker test. Tests only: chromium runs the operator page's
# browser test (driven by Playwright over its own pipe: no chromedriver, no browser download).
APT_PACKAGES := python3.11 python3.11-venv mosquitto postgresql openssl
TEST_APT_PACKAGES := chromium
export HF_HUB_OFFLINE := 1

.PHONY: run test setup serve-setup system-deps test-system-deps lint bench clean

run: setup
	$(BIN)/linewatch run --config config.toml

test: system-deps test-system-deps setup serve-setup lint
	$(BIN)/python -m pytest -q --durations=10

setup: $(VENV)/.installed

# Debian/Ubuntu packages; skipped when everything is already there (pyenv, a prior install).
system-deps:
	@missing=; \
	command -v $(PYTHON) >/dev/null 2>&1 || missing=1; \
	[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || missing=1; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing=1; \
	command -v openssl >/dev/null 2>&1 || missing=1; \
	$(SERVE_PYTHON) -c "import ensurepip" >/dev/null 2>&1 || missing=1; \
	if [ -n "$$missing" ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends $(APT_PACKAGES); \
	fi

test-system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends $(TEST_APT_PACKAGES); \
	}

$(VENV)/.installed: pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev]'
	touch $@

# The scoring server's environment (the tests start one); linewatch goes in without its daemon dependencies.
serve-setup: $(SERVE_VENV)/.installed

$(SERVE_VENV)/.installed: deploy/serve/requirements.txt pyproject.toml | system-deps
	$(SERVE_PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install --disable-pip-version-check -q -r deploy/serve/requirements.txt
	$(SERVE_VENV)/bin/python -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

lint: setup
	$(BIN)/ruff check linewatch tests benchmarks

bench: setup
	$(BIN)/python benchmarks/scorer_throughput.py

clean:
	rm -rf $(VENV) $(SERVE_VENV) data models/demo
