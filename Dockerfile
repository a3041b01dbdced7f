# syntax=docker/dockerfile:1
# chatd: multi-stage image. Build: docker build -t chatd .  Run: docker run -p 50051:50051 chatd

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY generated ./generated
RUN python -m venv /opt/chatd \
 && /opt/chatd/bin/pip install --upgrade pip \
 && /opt/chatd/bin/pip install .

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
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import grpc, sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; ch = grpc.insecure_channel('127.0.0.1:50051'); r = g.HealthStub(ch).Check(h.HealthCheckRequest(service='chatd.v1.ChatService'), timeout=2); sys.exit(0 if r.status == h.HealthCheckResponse.SERVING else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["chatd", "serve"]
