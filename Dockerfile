# syntax=docker/dockerfile:1
# chatd: multi-stage image. Build: docker build -t chatd .
# Run: docker run -p 50051:50051 -v chatd-data:/data -e CHATD_API_KEYS=me:secret chatd
# (it listens on 0.0.0.0, so it needs API keys, or CHATD_INSECURE_NO_AUTH=true on a trusted
# network: without either chatd refuses to start)

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The locked dependencies first, in a layer of their own: it is rebuilt only when the lock
# changes, not on every change to chatd's source. Every file is checked against its hash.
COPY requirements.lock ./
RUN python -m venv /opt/chatd \
 && /opt/chatd/bin/pip install --upgrade pip \
 && /opt/chatd/bin/pip install --no-deps --require-hashes -r requirements.lock
# Then chatd itself, without resolving anything again.
COPY pyproject.toml README.md ./
COPY server ./server
COPY generated ./generated
RUN /opt/chatd/bin/pip install --no-deps . \
 && /opt/chatd/bin/pip check

FROM python:3.11-slim-bookworm
ENV PATH=/opt/chatd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CHATD_LISTEN=0.0.0.0:50051 \
    CHATD_DATABASE_URL=sqlite:////data/chatd.db \
    CHATD_LOG_FORMAT=json \
    CHATD_METRICS_LISTEN=0.0.0.0:9464
RUN groupadd --system chatd && useradd --system --gid chatd --home-dir /data chatd \
 && mkdir -p /data && chown chatd:chatd /data
COPY --from=build /opt/chatd /opt/chatd
USER chatd
WORKDIR /data
VOLUME ["/data"]
EXPOSE 50051 9464
# `chatd health` reads the same settings as the server (CHATD_LISTEN, CHATD_TLS_*): set
# them with `docker run -e`, not as flags after the image name, so that both see them.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["chatd", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["chatd", "serve"]
