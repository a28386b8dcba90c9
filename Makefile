PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint demo demo-model demo-spotter clean cpp

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# -rs prints why a test skipped (no TensorRT, no GPU, no C++ toolchain...).
test: $(STAMP)
	$(PY) -m pytest -q -rs

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info

# The bundled demo model: the `tiny` preset trained by this project's trainer on the synthetic world
# and exported by its exporter with an exemplar bank (a few MB, committed under demo/package).
DEMO_WORK ?= runs/demo-model
demo-model: $(STAMP)
	$(PY) -m synth --out $(DEMO_WORK)/data --dives 300 --seed 0 --workers 2 --quiet --overwrite
	$(PY) -m train --config configs/synthetic_tiny.yaml --data-root $(DEMO_WORK)/data --out $(DEMO_WORK)/run
	$(VENV)/bin/fineparser-export $(DEMO_WORK)/run/best.pt --out demo/package --data-root $(DEMO_WORK)/data --exemplars-per-dive 5 --no-masks-graph
	@# The re-export keeps the tuned spotter of the package it replaces; a package without one gets a new one.
	@$(PY) -c "import json, sys; sys.exit('spotter' not in json.load(open('demo/package/manifest.json')))" || $(MAKE) demo-spotter

# The demo package's spotter (live dive detection, --segment auto): trained on 40 synthetic 320x180 broadcasts,
# added to demo/package without touching its other graphs, its thresholds and holds tuned on 6 other broadcasts.
# `make demo-model` keeps the spotter the package has (and runs this only where it has none).
SPOTTER_WORK ?= runs/demo-spotter
demo-spotter: $(STAMP)
	$(PY) -m synth --out $(SPOTTER_WORK)/data --dives 0 --broadcasts 40 --broadcast-size 320x180 --seed 0 --quiet --overwrite
	$(PY) -m synth --out $(SPOTTER_WORK)/val --dives 0 --broadcasts 6 --broadcast-size 320x180 --seed 50 --quiet --overwrite
	OMP_NUM_THREADS=1 $(PY) -m train --config configs/spotter_synthetic.yaml --data-root $(SPOTTER_WORK)/data --out $(SPOTTER_WORK)/run eval_every=2
	$(VENV)/bin/fineparser-export $(SPOTTER_WORK)/run/best.pt --add-spotter --out demo/package
	$(VENV)/bin/fineparser-calibrate demo/package --segmenter --data-root $(SPOTTER_WORK)/val

demo: $(STAMP)
	$(PY) -m runtime.cli --demo

# cpp_demo/: library, fineparser_tool and C++ unit tests (fineparser_demo too where CMake finds TensorRT).
# tests/test_cpp_demo.py builds into the same folder and compares the C++ side with the Python one.
CPP_BUILD ?= build/cpp_demo
cpp:
	cmake -S cpp_demo -B $(CPP_BUILD) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(CPP_BUILD) --parallel 2
	cd $(CPP_BUILD) && ctest --output-on-failure
