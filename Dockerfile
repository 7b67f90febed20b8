# secondreader: GPU-capable image (CUDA torch from PyPI; runs on CPU when no GPU is visible).
#   docker build -t secondreader .
#   docker run --rm --gpus all -v "$PWD/studies:/studies:ro" secondreader screen --format json /studies
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SECONDREADER_HOME=/var/lib/secondreader \
    SECONDREADER_MODELS_DIR=/app/models

WORKDIR /app
# torch first and pinned: the PyPI wheel for Linux x86_64 carries CUDA and falls back to the CPU.
RUN pip install torch==2.13.0
COPY pyproject.toml README.md ./
COPY src ./src
COPY models ./models
COPY training ./training
RUN pip install . && useradd --system --home /var/lib/secondreader --create-home secondreader
USER secondreader
ENTRYPOINT ["secondreader"]
CMD ["screen", "--samples"]
