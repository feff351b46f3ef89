# xylen in one image: `xylen serve` by default; docker-compose.yml runs serve, collect and retrain from it.
#   docker build -t xylen .                                                # python:3.11-slim
#   docker build --build-arg PYTHON_IMAGE=python:3.12-slim -t xylen .     # any slim Python >= 3.10
# Settings and API keys live in $XYLEN_HOME/models.env on the volume, never in the image (README, "Docker").
ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: the wheels are built here and installed into /opt/venv. Only that venv reaches the final image:
# compilers a source build might pull in, pip, build caches and the optional build CA all stay in this stage.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# build-ca.pe[m]: an optional CA bundle for pip behind TLS interception (the Docker e2e test puts the host's in
# its build context). The wildcard makes it optional (pyproject.toml always matches); release builds have none.
COPY pyproject.toml build-ca.pe[m] ./
# The dependencies first, in a layer of their own: a stub package with the real pyproject.toml pulls them in, so
# an edit of the source reuses this layer instead of downloading them again.
RUN if [ -f build-ca.pem ]; then export PIP_CERT=/src/build-ca.pem; fi \
 && python3 -m venv /opt/venv \
 && mkdir -p src/xylen \
 && touch src/xylen/__init__.py README.md \
 && /opt/venv/bin/pip install . \
 && /opt/venv/bin/pip uninstall --yes xylen \
 && rm -rf src README.md build
COPY . .
# xylen itself as a wheel (what `pip install xylen` would get: package data included), then installed from it.
RUN if [ -f build-ca.pem ]; then export PIP_CERT=/src/build-ca.pem; fi \
 && /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --no-deps /wheels/xylen-*.whl \
 && /opt/venv/bin/xylen --help > /dev/null

# ---- final: the base image, libgomp1, the venv and a non-root user. No compiler, no pip cache, no build CA.
FROM ${PYTHON_IMAGE}
# LightGBM's wheel links OpenMP (libgomp.so.1), which slim images lack. Versions follow the base image's Debian
# release (bookworm, trixie...), so they are not pinned here.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*
# A fixed uid, so a volume or bind mount can be prepared for it (chown 10001). Its home is outside XYLEN_HOME
# so that caches (matplotlib's font cache) do not land in the data volume.
RUN groupadd --system --gid 10001 xylen \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/xylen --shell /usr/sbin/nologin xylen \
 && install -d -o xylen -g xylen -m 0750 /var/lib/xylen
COPY --from=build /opt/venv /opt/venv
# OMP_NUM_THREADS=1: an OpenMP team in a server collapses throughput under CPU contention (training picks its own
# thread count from the profile and is not limited by this).
ENV PATH=/opt/venv/bin:$PATH \
    XYLEN_HOME=/var/lib/xylen \
    OMP_NUM_THREADS=1 \
    PYTHONUNBUFFERED=1
# Models, the candle store, logs and models.env: a new named volume starts as this folder, owned by xylen.
VOLUME /var/lib/xylen
WORKDIR /var/lib/xylen
# Numeric, so that runtimes can check it is not root without reading /etc/passwd (Kubernetes runAsNonRoot).
USER 10001:10001
EXPOSE 8000
# Readiness, not liveness: 503 while the first model trains or loads, and while draining after SIGTERM. It probes
# port 8000, the default; a server moved to another port needs its own healthcheck. The probes need no API key.
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python3", "-c", "import sys, urllib.request as u\ntry: u.urlopen('http://127.0.0.1:8000/health/ready', timeout=4)\nexcept Exception as e: sys.exit(f'not ready: {e}')"]
ENTRYPOINT ["xylen"]
# A non-loopback bind needs API keys (XYLEN_API_KEYS in models.env), else serve refuses to start (exit 2);
# docker-compose.yml publishes on the host's 127.0.0.1 only and passes --allow-unauthenticated instead.
CMD ["serve", "--host", "0.0.0.0", "--train-if-missing"]
