# mmrag image: the library, the indexer CLI and the API, CPU or GPU (torch wheels carry CUDA).
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends poppler-utils tesseract-ocr tesseract-ocr-eng \
    libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.lock pyproject.toml README.md alembic.ini ./
RUN pip install --no-cache-dir -r requirements.lock
COPY mmrag ./mmrag
COPY indexer ./indexer
COPY api ./api
RUN pip install --no-cache-dir --no-deps -e .
ENV MMRAG_DATA_DIR=/data HF_HUB_OFFLINE=1
VOLUME ["/data", "/models"]
ENTRYPOINT ["mmrag"]
