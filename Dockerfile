# The image every step of the compiled Kubeflow pipeline runs in: the locked stack plus hoh,
# installed as a package so `hoh.trainer.task.run_fn` & co. import by dotted path.
#   make image IMAGE=registry.example.com/hoh:0.1.0 && docker push registry.example.com/hoh:0.1.0
#   hoh kfp compile --image registry.example.com/hoh:0.1.0 ...        (see docs/KUBEFLOW.md)
# Kubeflow starts each step as `python -m tfx.orchestration.kubeflow.v2.container.
# kubeflow_v2_run_executor --executor_class_path ...` (the compiled spec sets the command), so
# `python` on PATH must be the venv's; the ENTRYPOINT is the same command for a bare `docker run`.
#
# Supply chain: the base image is pulled by digest (a tag is moved to a new build every few
# weeks), every Python package is checked against the hashes in requirements.lock and uv against
# requirements-image.lock; no `# syntax=` line, so no frontend image is pulled by tag either.
# PYTHON_DIGEST pins PYTHON_IMAGE to one build. This one was taken from public Dockerfiles that
# pin the same tag (no registry is reachable from where hoh is developed, so it was not re-read
# from Docker Hub); refresh it where a registry is reachable:
#   docker buildx imagetools inspect python:3.11-slim-bookworm    # the "Digest:" line
# A digest no registry serves fails the build loudly; it never falls back to the moving tag.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG PYTHON_DIGEST=sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

# ---- build: compilers live only in this stage -------------------------------------------------
FROM ${PYTHON_IMAGE}@${PYTHON_DIGEST} AS build
# Two locked packages ship no wheel for Python 3.11 (pyfarmhash: C++, crcmod: C): build them here.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
COPY requirements-image.lock /tmp/
RUN pip install --no-cache-dir --require-hashes --no-deps -r /tmp/requirements-image.lock
ENV UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
WORKDIR /src
# The lock first: the dependency layer is rebuilt only when requirements.lock changes. Only the
# runtime lock: no JupyterLab, pytest or lint tools in the image (they are requirements-dev.lock).
COPY requirements.lock ./
RUN uv venv --python /usr/local/bin/python3.11 /opt/hoh/venv \
 && uv pip sync --python /opt/hoh/venv/bin/python --require-hashes requirements.lock
# Every folder setup.py maps into the `hoh` namespace (tests/test_kubeflow_image.py checks it).
COPY pyproject.toml setup.py README.md ./
COPY hoh/ hoh/
COPY pipeline/ pipeline/
COPY components/ components/
COPY transforms/ transforms/
COPY trainer/ trainer/
COPY schemas/ schemas/
COPY serving/ serving/
# Non-editable, no dependencies (the lock has them all), built with the lock's own setuptools.
RUN uv pip install --python /opt/hoh/venv/bin/python --no-deps --no-build-isolation . \
 && /opt/hoh/venv/bin/python -c "import hoh.pipeline.runners.kubeflow, hoh.trainer.task, hoh.transforms.preprocessing"

# ---- runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}@${PYTHON_DIGEST}
RUN useradd --create-home --uid 1000 --user-group --shell /usr/sbin/nologin hoh
COPY --from=build /opt/hoh/venv /opt/hoh/venv
# What hoh.env sets at import time, for code that imports TensorFlow before hoh (Beam workers).
ENV PATH=/opt/hoh/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/hoh/venv \
    TF_USE_LEGACY_KERAS=1 \
    UNSUPPORTED_DO_NOT_PACKAGE_USER_MODULES=1 \
    DO_NOT_TRACK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/hoh \
    KERAS_HOME=/home/hoh/.keras
# Numeric, so a pod's `runAsNonRoot: true` can verify it without reading /etc/passwd.
USER 1000:1000
WORKDIR /home/hoh
ENTRYPOINT ["python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
