# `make demo` and `make test` are the two commands a newcomer types; both set everything up first.
# Setting up is idempotent and fast when .venv already matches the two locks (a stamp file):
# requirements.lock (what the pipeline, serving and the Kubeflow image run on) and
# requirements-dev.lock (tests, notebooks, lint, supply-chain tools), both hash-checked.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hoh-installed
TOOLS := .tools
# Never let uv fetch a Python build from the internet: use the machine's Python 3.11.
export UV_PYTHON_DOWNLOADS := never
UV := $(shell command -v uv 2>/dev/null || echo $(TOOLS)/bin/uv)

.PHONY: setup demo test test-fast lock lint sbom audit lab clean help
help:
	@echo "make demo   - set up .venv and run the pipeline on the built-in demo images"
	@echo "make test   - set up .venv and run the whole test suite (unit + e2e)"
	@echo "make lock   - re-resolve both locks from requirements.in / requirements-dev.in (registry)"
	@echo "make lint   - ruff check + ruff format --check (pyproject.toml [tool.ruff]); make test runs it first"
	@echo "make sbom   - CycloneDX SBOM of requirements.lock -> $(SBOM)"
	@echo "make audit  - pip-audit of requirements.lock against PyPI's vulnerability data (network)"
	@echo "make lab    - JupyterLab in .venv on 127.0.0.1 (notebooks/; LAB_PORT=8888)"

$(TOOLS)/bin/uv:
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; hoh needs Python 3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv

LOCKS := requirements.lock requirements-dev.lock

# Every locked package is checked against the lock's hashes; hoh itself (editable, from this
# checkout) is installed separately, without dependencies, since it has no hash to check.
$(STAMP): $(LOCKS) pyproject.toml setup.py | $(UV)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; hoh needs Python 3.11" >&2; exit 1; }
	test -x $(PY) || $(UV) venv --python "$$(command -v $(PYTHON))" $(VENV)
	$(UV) pip sync --python $(PY) --require-hashes $(LOCKS)
	$(UV) pip install --python $(PY) --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/hoh run

# Lint first: a lint error fails `make test` (and CI) in seconds, before the long suite.
test: setup lint
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

# The runtime lock first: the dev lock is constrained by it (requirements-dev.in says so).
# requirements-excludes.txt keeps JupyterLab out of the runtime lock (and the image).
LOCK_FLAGS := --python-version 3.11 --python-platform x86_64-manylinux_2_35 --generate-hashes
lock: | $(UV)
	$(UV) pip compile requirements.in $(LOCK_FLAGS) --excludes requirements-excludes.txt \
	  -o requirements.lock
	$(UV) pip compile requirements-dev.in $(LOCK_FLAGS) -o requirements-dev.lock
	$(UV) pip compile requirements-image.in $(LOCK_FLAGS) -o requirements-image.lock

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# What the image installs, as a CycloneDX SBOM (offline: the lock has names, versions, hashes).
SBOM ?= sbom.cdx.json
sbom: setup
	$(VENV)/bin/cyclonedx-py requirements requirements.lock --pyproject pyproject.toml \
	  --output-reproducible -o $(SBOM)
	@echo "wrote $(SBOM)"

# Needs the network (PyPI's JSON API, or AUDIT_SERVICE=osv for api.osv.dev), so it is not part of
# `make test`. Audits the pinned, hashed lock as written, without resolving or installing
# anything; --strict fails when a package cannot be looked up, instead of passing unaudited.
AUDIT_SERVICE ?= pypi
audit: setup
	$(VENV)/bin/pip-audit -r requirements.lock --require-hashes --disable-pip --strict \
	  --vulnerability-service $(AUDIT_SERVICE) --progress-spinner off

clean:
	rm -rf hoh-output .pytest_cache

# The Kubeflow image (Dockerfile; docs/KUBEFLOW.md). Tag it for your registry:
#   make image IMAGE=registry.example.com/hoh:0.1.0
IMAGE ?= hoh:$(shell git rev-parse --short HEAD 2>/dev/null || echo dev)
# The base image is pinned by digest in the Dockerfile (ARG PYTHON_DIGEST); a fresher one:
# make image PYTHON_DIGEST=sha256:...
PYTHON_DIGEST ?= $(shell sed -n 's/^ARG PYTHON_DIGEST=//p' Dockerfile)
.PHONY: image
image:
	@command -v docker >/dev/null || { echo "error: docker not found; build the Dockerfile where a Docker engine runs" >&2; exit 1; }
	docker build --build-arg PYTHON_DIGEST=$(PYTHON_DIGEST) -t $(IMAGE) .
	@echo "built $(IMAGE); push it, then: hoh kfp compile --image $(IMAGE) ..."
