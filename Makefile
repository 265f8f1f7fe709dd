# The two commands of the README. Both install what they need first (scripts/bootstrap.sh).
.PHONY: run test lint bootstrap

# Start a node with the default model; discovery confined to this machine (peers from examples/peers.json).
# Pass more flags with ARGS="...", e.g. make run ARGS="--chatgpt-api-port 8000".
run:
	@bash scripts/bootstrap.sh
	.venv/bin/exo --discovery-module manual --discovery-config-path examples/peers.json \
		--node-host 127.0.0.1 --chatgpt-api-host 127.0.0.1 $(ARGS)

# Lint, type-check and run the whole test suite.
test:
	@bash scripts/bootstrap.sh --test
	$(MAKE) --no-print-directory lint
	UV="$$(cat .venv/.uv-path)" .venv/bin/pytest $(ARGS)

lint:
	.venv/bin/ruff check .
	.venv/bin/mypy
