# The two commands a new machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONSTRAINTS := constraints.txt

.PHONY: demo test test-slow venv clean default-model

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: the CPU wheel on this disk, so nothing pulls a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[all,dev]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m nitro_edge.demo --out demo-output

# Retrain the embedded default model (teacher, first stage and NitroFusion student, 3 seeds and ablations):
# about 1 h 40 min on 2 cores (docs/training.md, "Cost").
default-model: venv
	$(PY) -m nitro_edge.training.recipes.shapes --out runs/shapes --install-default

test: venv
	$(PY) -m pytest -q

test-slow: venv
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) demo-output
