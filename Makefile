# Set-up is two commands: `make run` (quickstart) and `make test` (whole suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv
PORT   ?= 8000
HOST   ?= 127.0.0.1
STAMP  := $(VENV)/.installed

# Python dependencies come from uv.lock (every package pinned with its hashes), never from the
# ranges in pyproject.toml: `uv sync --locked` installs exactly the lock (and removes anything
# else from the venv) and fails when pyproject.toml and the lock disagree. `make lock` is the
# one deliberate way to upgrade. uv itself (and pip) are pinned in the lock's `bootstrap` group,
# exported with their hashes to requirements-uv.txt, which a fresh venv installs first.
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never
UV_SYNC := $(UV) sync --locked --all-extras --group bootstrap --group reference
UV_EXPORT_BOOTSTRAP := $(UV) export --frozen --only-group bootstrap --no-emit-project --no-header

NODE_DIRS := $(patsubst %/package.json,%,$(wildcard tests/*/package.json scripts/*/package.json))
NODE_STAMPS := $(addsuffix /node_modules/.installed,$(NODE_DIRS))

CHROMIUM := /usr/bin/chromium

.PHONY: install lock lock-check node-deps browser run test lint format bench clean

$(UV): requirements-uv.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r requirements-uv.txt
	touch $(UV)

$(STAMP): pyproject.toml uv.lock $(UV)
	$(UV_SYNC)
	touch $(STAMP)

install: $(STAMP)

# Deliberate upgrade: re-resolve every dependency to the newest allowed by pyproject.toml
# (`make lock UV_LOCK_ARGS=` only re-locks what pyproject.toml changed), then install it.
UV_LOCK_ARGS ?= --upgrade
lock: $(UV)
	$(UV) lock $(UV_LOCK_ARGS)
	$(UV_EXPORT_BOOTSTRAP) --quiet --output-file requirements-uv.txt
	$(UV_SYNC)
	touch $(STAMP)

# CI's guard (part of `make test`): the lock matches pyproject.toml, and the bootstrap file
# matches the lock.
lock-check: $(UV)
	$(UV) lock --check
	$(UV_EXPORT_BOOTSTRAP) | diff -u requirements-uv.txt - \
	  || { echo "requirements-uv.txt is stale: run make lock UV_LOCK_ARGS="; exit 1; }

# Node tools used by the end-to-end tests (oidc-provider, MCP conformance suite ...), each pinned
# by its own package-lock.json.
%/node_modules/.installed: %/package.json %/package-lock.json
	npm ci --prefix $* --no-audit --no-fund --loglevel=error
	touch $@

node-deps: $(NODE_STAMPS)

# The browser tests (tests/test_audit_browser.py) drive Debian's chromium through Playwright's
# Python package; no browser is ever downloaded. Installed once, as root on Debian (CI).
browser:
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing Debian's chromium for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "Browser tests will be skipped: $(CHROMIUM) is missing (apt-get install chromium)"; \
	  fi; \
	fi

run: install
	@mkdir -p var
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py migrate --noinput
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py metrics_clean --yes
	@echo
	@echo "Governed MCP server: http://$(HOST):$(PORT)/mcp   (admin: /admin/, docs: /api/docs)"
	@echo "Create an admin login:  DEBUG=1 $(BIN)/python manage.py createsuperuser"
	@if [ -z "$$SCALEKIT_ENVIRONMENT_URL$$MCPAUTH_ISSUER" ]; then \
	  TOKEN=$$(DEBUG=$${DEBUG:-1} BASE_URL=$${BASE_URL:-http://$(HOST):$(PORT)} \
	    $(BIN)/python manage.py mint_token --client-id quickstart --tenant demo \
	    --scopes "todo:read todo:write"); \
	  echo "Development token (tenant 'demo', scopes todo:read todo:write, valid 1 h):"; \
	  echo "  export TOKEN=$$TOKEN"; \
	  echo "Try it:"; \
	  echo "  curl -s http://$(HOST):$(PORT)/mcp -H 'Authorization: Bearer '\$$TOKEN \\"; \
	  echo "    -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \\"; \
	  echo "    -d '{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"list_todos\",\"arguments\":{}}}'"; \
	  echo; \
	fi
	DEBUG=$${DEBUG:-1} BASE_URL=$${BASE_URL:-http://$(HOST):$(PORT)} \
	  $(BIN)/uvicorn config.asgi:application --host $(HOST) --port $(PORT) --no-access-log

test: install lock-check node-deps browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DEBUG=1 $(BIN)/mypy .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .mypy_cache $(addsuffix /node_modules,$(NODE_DIRS))
