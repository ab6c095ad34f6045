# syntax=docker/dockerfile:1
# The Headwater image: one image for the gateway, the flow and the scheduled jobs (entrypoint `headwater`).
# Production dependencies only: no `embedded` (demo stand-ins) or `test` extras.
#
#   docker build -t headwater:0.1.0 .
#   docker run --rm headwater:0.1.0 settings

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# A C compiler for schemas/_cformats.c, _spans.c and _cschema.c: format checks, span finder, schema checks (the runtime stage copies only the venv).
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev > /dev/null \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, from pyproject.toml alone, so that this layer is reused while only the code changes.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip install --upgrade pip setuptools wheel \
 && pip install -r /tmp/requirements.txt

# Then the project itself (the packages pyproject.toml lists; .dockerignore keeps tests, state and tools out).
COPY . .
RUN pip install --no-deps . \
 && headwater --help > /dev/null \
 && python -c "import bytewax.run, flows.run, ingest_gateway.app, schemas._cformats, schemas._spans, schemas._cschema, sinks.clickhouse, sinks.snowflake, sinks.s3_parquet"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="headwater" \
      org.opencontainers.image.description="Headwater analytics-event pipeline: gateway, Bytewax flow, sinks" \
      org.opencontainers.image.licenses="Apache-2.0"
# jemalloc: the gateway preloads it (setting gateway_allocator), about a tenth more events per core.
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends libjemalloc2 > /dev/null \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 headwater \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/headwater --shell /usr/sbin/nologin headwater \
 && mkdir -p /var/lib/headwater \
 && chown 10001:10001 /var/lib/headwater
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HEADWATER_DATA_DIR=/var/lib/headwater
USER 10001:10001
WORKDIR /var/lib/headwater
# 8080: gateway HTTP; 9999: Bytewax process-to-process; 3030: Bytewax API (/metrics)
EXPOSE 8080 9999 3030
ENTRYPOINT ["headwater"]
CMD ["--help"]
