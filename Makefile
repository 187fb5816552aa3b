# Set-up is two commands: `make run` (quickstart) and `make test` (whole suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
HOST   ?= 127.0.0.1
STAMP  := $(VENV)/.installed

NODE_DIRS := $(patsubst %/package.json,%,$(wildcard tests/*/package.json scripts/*/package.json))
NODE_STAMPS := $(addsuffix /node_modules/.installed,$(NODE_DIRS))

.PHONY: install node-deps run test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Node tools used by the end-to-end tests (oidc-provider, MCP conformance suite ...), each pinned
# by its own package-lock.json.
%/node_modules/.installed: %/package.json %/package-lock.json
	npm ci --prefix $* --no-audit --no-fund --loglevel=error
	touch $@

node-deps: $(NODE_STAMPS)

run: install
	@mkdir -p var
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py migrate --noinput
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
	  $(BIN)/uvicorn config.asgi:application --host $(HOST) --port $(PORT)

test: install node-deps
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
