# `make demo` and `make test` are the two commands a newcomer types; both set everything up first.
# Setting up is idempotent and fast when .venv already matches requirements.lock (a stamp file).

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hoh-installed
TOOLS := .tools
# Never let uv fetch a Python build from the internet: use the machine's Python 3.11.
export UV_PYTHON_DOWNLOADS := never
UV := $(shell command -v uv 2>/dev/null || echo $(TOOLS)/bin/uv)

.PHONY: setup demo test test-fast lock lab clean help
help:
	@echo "make demo   - set up .venv and run the pipeline on the built-in demo images"
	@echo "make test   - set up .venv and run the whole test suite (unit + e2e)"
	@echo "make lock   - re-resolve requirements.lock from requirements.in (needs the registry)"
	@echo "make lab    - JupyterLab in .venv on 127.0.0.1 (notebooks/; LAB_PORT=8888)"

$(TOOLS)/bin/uv:
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; hoh needs Python 3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv

$(STAMP): requirements.lock setup.py | $(UV)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; hoh needs Python 3.11" >&2; exit 1; }
	test -x $(PY) || $(UV) venv --python "$$(command -v $(PYTHON))" $(VENV)
	$(UV) pip sync --python $(PY) requirements.lock
	$(UV) pip install --python $(PY) --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/hoh run

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not e2e"

# Notebooks (notebooks/README.md). Only this machine can reach the server; open the printed URL
# (it carries the login token). `make test` executes the notebooks and fails on committed outputs.
# Jupyter refuses to run as root unless told; containers and VMs often are root.
LAB_PORT ?= 8888
lab: setup
	$(VENV)/bin/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) --no-browser \
	  $(if $(filter 0,$(shell id -u)),--allow-root) \
	  --ServerApp.root_dir=$(CURDIR) notebooks/01_pipeline_interactive.ipynb

.PHONY: strip-notebooks
strip-notebooks: setup
	$(PY) -m nbstripout notebooks/*.ipynb

lock: | $(UV)
	$(UV) pip compile requirements.in --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_35 -o requirements.lock

clean:
	rm -rf hoh-output .pytest_cache

# The Kubeflow image (Dockerfile; docs/KUBEFLOW.md). Tag it for your registry:
#   make image IMAGE=registry.example.com/hoh:0.1.0
IMAGE ?= hoh:$(shell git rev-parse --short HEAD 2>/dev/null || echo dev)
.PHONY: image
image:
	@command -v docker >/dev/null || { echo "error: docker not found; build the Dockerfile where a Docker engine runs" >&2; exit 1; }
	docker build -t $(IMAGE) .
	@echo "built $(IMAGE); push it, then: hoh kfp compile --image $(IMAGE) ..."
