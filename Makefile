# `make demo` and `make test` each prepare .venv (idempotent) and run.
# `make test-sglang` (also run by `make test`) prepares .venv-sglang, SGLang's
# real code on CPU, and runs tests/sglang in it.
VENV ?= .venv
PY := $(VENV)/bin/python
SGLANG_VENV ?= .venv-sglang

.PHONY: venv venv-sglang demo test test-sglang test-unit test-integration bench clean

venv:
	@./scripts/bootstrap.sh

demo: venv
	$(VENV)/bin/rfork testbed --seeds 3 --model qwen2.5-0.5b --seed-rate 150MB/s,150MB/s,60MB/s --chunk-size 16MiB \
		--kill-seed-at 0.5 --compare-baseline --json out/demo.json

# The main suite reports tests/sglang as skipped (no SGLang in .venv); the
# SGLang tier then runs them in its own venv, built while the main suite runs
# (scripts/run_tests.sh; RFORK_TEST_WORKERS=1 runs the main suite in one process).
test: venv
	@VENV=$(VENV) SGLANG_VENV=$(SGLANG_VENV) ./scripts/run_tests.sh

venv-sglang:
	@SGLANG_VENV=$(SGLANG_VENV) ./scripts/bootstrap_sglang.sh

test-sglang: venv-sglang
	$(SGLANG_VENV)/bin/python -m pytest tests/sglang -q

test-unit: venv
	$(PY) -m pytest tests/unit -q

test-integration: venv
	$(PY) -m pytest tests/integration -q

bench: venv
	$(PY) -m bench.fork_bench --json out/bench-fork.json

clean:
	rm -rf $(VENV) $(SGLANG_VENV) out .pytest_cache
