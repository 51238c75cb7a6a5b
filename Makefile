.PHONY: setup test demo bench lint faults
setup:
	bash scripts/setup.sh
test:
	bash scripts/test.sh
demo: setup
	.venv/bin/python demo/run.py
lint:
	.venv/bin/ruff check src tests bench demo
bench: setup
	.venv/bin/python bench/run.py
# The fault-injection and fuzzing suite in its long form (CI runs the bounded form inside `make test`).
# Override the knobs: make faults HYDRA_FAULTS_TRIALS=10 HYDRA_FUZZ_SECONDS=1800 [HYDRA_FAULTS_SEED=N]
HYDRA_FAULTS_TRIALS ?= 5
HYDRA_FUZZ_SECONDS ?= 600
faults: setup
	mkdir -p build && rm -f build/faults-report.jsonl
	HYDRA_FAULTS_TRIALS=$(HYDRA_FAULTS_TRIALS) HYDRA_FUZZ_SECONDS=$(HYDRA_FUZZ_SECONDS) \
	  HYDRA_FAULTS_REPORT=$(CURDIR)/build/faults-report.jsonl \
	  .venv/bin/python -m pytest -q -p no:cacheprovider -m faults tests/faults
	.venv/bin/python -m tests.faults.report build/faults-report.jsonl
