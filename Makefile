# The two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= out/demo
SEED ?= 0
# On Linux x86-64 the CPU-only TensorFlow wheel keeps the venv ~1 GB smaller than the CUDA build.
TF_PIN ?= tensorflow-cpu>=2.16,<2.22

.PHONY: demo test venv clean bench
venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	if [ "$$(uname -s)-$$(uname -m)" = "Linux-x86_64" ]; then $(PY) -m pip install -q "$(TF_PIN)"; fi
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/alzaudit demo --out $(OUT) --seed $(SEED)

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf out .pytest_cache .benchmarks
