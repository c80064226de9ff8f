# Fresh checkout: `make demo` (main job) and `make test` (whole suite); each sets up .venv/ first.
PYTHON := .venv/bin/python

.PHONY: setup demo selfcheck test
setup:
	bash tools/setup_env.sh

demo: setup
	$(PYTHON) demo/quickstart.py

selfcheck: setup
	$(PYTHON) tools/analysis/model_complexity.py

test: setup
	$(PYTHON) -m pytest tests -q -p no:cacheprovider
