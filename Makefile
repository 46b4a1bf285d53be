# devstack: two commands on a fresh machine.
#   make up    runs the example shop on the local stack (devstack up --local): baselines,
#              your copies under sidecars, sync, hot reload, Traefik routing, provisioning
#   make test  runs every check CI runs
.PHONY: up test check lint typecheck proto-check unit bench venv clean

VENV := .venv
PY := $(VENV)/bin/python

venv:
	@./scripts/bootstrap

up: venv
	@$(VENV)/bin/devstack up --local -f examples/shop $(UP_ARGS)

test: venv
	@./scripts/test

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

proto-check: venv
	./scripts/gen-proto && git diff --exit-code -- proto/

bench: venv
	./bench/run

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
