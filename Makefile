.PHONY: setup test demo bench lint
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
