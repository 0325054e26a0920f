# The image every pod of `python -m xlafw.launch` runs: xlafw, the environment
# `make env` builds (the same pin files, installed the same way) and the TPU
# runtime (torch_xla's `tpu` extra: libtpu). Build and push:
#   make image IMAGE=REGISTRY/xlafw:TAG && docker push REGISTRY/xlafw:TAG
# Pods run from /xlafw: python -m xlafw.main --fdl_config_file=gs://.../config.json ...
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    TOKENIZERS_PARALLELISM=false \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /xlafw
COPY requirements.txt requirements-nodeps.txt ./
# One resolve for the pins and the TPU extra, so libtpu comes with the torch_xla
# pinned in requirements.txt; then the data-only packages without their deps.
RUN pip install -r requirements.txt "torch_xla[tpu]==2.9.0" \
 && pip install --no-deps -r requirements-nodeps.txt

COPY pyproject.toml ./
COPY experiments/ experiments/
COPY xlafw/ xlafw/
