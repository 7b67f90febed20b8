# secondreader GPU image: the BentoML service on a CUDA runtime base, models baked in, non-root.
#   docker build -t secondreader .
#   docker run --gpus all -p 3000:3000 -e SECONDREADER_API_KEYS=change-me \
#     -e SECONDREADER_DATABASE_URL=postgresql://user:pass@db:5432/secondreader secondreader
# Without a GPU the same image runs on the CPU (SECONDREADER_DEVICE=auto).
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    SECONDREADER_HOME=/var/lib/secondreader \
    SECONDREADER_MODELS_DIR=/app/models \
    SECONDREADER_HOST=0.0.0.0 \
    SECONDREADER_HTTP_PORT=3000

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

WORKDIR /app
# torch first and pinned: the PyPI wheel for Linux x86_64 is the CUDA build.
RUN pip install torch==2.13.0
COPY pyproject.toml README.md ./
COPY src ./src
COPY serving ./serving
COPY models ./models
# the s3 extra: replicas keep their spool and artefacts in an S3 bucket (serving/kubernetes/)
RUN pip install '.[s3]' \
 && useradd --system --uid 10001 --home-dir /var/lib/secondreader --create-home secondreader
USER secondreader
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD python3 -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=4).status != 200)"
# SECONDREADER_API_KEYS must be set: the service refuses a public interface without keys.
ENTRYPOINT ["secondreader"]
CMD ["serve", "--no-samples"]
