# One image for both the backend (`seggpt-ls serve`) and the GPU workers (`seggpt-ls worker`).
# The CUDA build of torch comes from the PyTorch index for the CUDA version of the host's driver.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MODEL_DIR=/data \
    HF_HOME=/models/huggingface

RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# torch first, from the index that matches the GPU; the project must not pull another build
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md ./
COPY seggpt_core ./seggpt_core
COPY worker ./worker
COPY backend ./backend
RUN pip install .

RUN useradd --create-home --uid 1000 seggpt && mkdir -p /data /models && chown seggpt /data /models
USER seggpt
VOLUME ["/data", "/models"]
EXPOSE 9090
CMD ["seggpt-ls", "serve", "--host", "0.0.0.0", "--port", "9090", "--workers", "0"]
