# Fresh checkout: `make demo` (main job) and `make test` (whole suite); each sets up .venv/ first.
PYTHON := .venv/bin/python

.PHONY: setup demo selfcheck lint test benchmark
setup:
	bash tools/setup_env.sh

demo: setup
	$(PYTHON) demo/quickstart.py

selfcheck: setup
	$(PYTHON) tools/analysis/model_complexity.py

# ruff (pyproject.toml): lint, import order, format; `ruff format .` fixes the format.
lint: setup
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

test: setup lint
	$(PYTHON) -m pytest tests -q -p no:cacheprovider --durations=25

# The numbers of docs/performance.md: classifiers S0-S4 (table + plot), SSDLite and DeepLabV3 S0.
benchmark: setup
	$(PYTHON) tools/benchmark.py --task cls --arch s0 s1 s2 s3 s4 --compare-settings --onnx --out-dir work_dirs/benchmark/cls
	$(PYTHON) tools/benchmark.py --task det --arch s0 --onnx --out-dir work_dirs/benchmark/det
	$(PYTHON) tools/benchmark.py --task seg --arch s0 --onnx --warmup 2 --repeats 10 --out-dir work_dirs/benchmark/seg
