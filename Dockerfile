# Parley, as run by docker-compose.yml. Not built in CI (no Docker daemon there):
# tests/test_deploy.py checks this file's rules and `docker compose config`.
#
# Stage 1 builds Parley's wheel from the source; stage 2 installs the dependencies
# in their own layer (rebuilt only when pyproject.toml or the pins change), then the
# wheel (a normal, non-editable install), and runs as an unprivileged user.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protocol protocol
COPY sessions sessions
COPY server server
COPY client client
COPY loadtest loadtest
COPY web-demo web-demo
RUN pip wheel --no-cache-dir --disable-pip-version-check --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Dependencies: exactly the versions the tests passed with (deploy/constraints.txt, scripts/pin-deps)
COPY pyproject.toml deploy/constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt -c constraints.txt

# Parley itself, non-editable, with no dependency resolution of its own
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels

RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin parley
USER parley

ENV PARLEY_HOST=0.0.0.0 PARLEY_PORT=8000 PARLEY_LOG_FORMAT=json
EXPOSE 8000
# Liveness only: /healthz answers while the process serves. A Redis blip must not mark every
# replica unhealthy; readiness (/readyz, store reachable and not draining) is the balancer's check.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PARLEY_PORT', '8000'), timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["parley", "serve"]
