# `make demo` and `make test` each prepare .venv (idempotent) and run.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv demo test test-unit test-integration bench clean

venv:
	@./scripts/bootstrap.sh

demo: venv
	$(VENV)/bin/rfork testbed --seeds 3 --model qwen2.5-0.5b --seed-rate 150MB/s,150MB/s,60MB/s --chunk-size 16MiB \
		--kill-seed-at 0.5 --compare-baseline --json out/demo.json

test: venv
	$(PY) -m pytest tests -q

test-unit: venv
	$(PY) -m pytest tests/unit -q

test-integration: venv
	$(PY) -m pytest tests/integration -q

bench: venv
	$(PY) -m bench.fork_bench --json out/bench-fork.json

clean:
	rm -rf $(VENV) out .pytest_cache
