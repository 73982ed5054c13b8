#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py): the demo recipe on one CUDA device with model.dtype auto, offline.
# Usage: scripts/gpu_check.sh [--steps N] [key.sub=value ...]; PYTHON picks the interpreter (default .venv's).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not found"
PYTHONUNBUFFERED=1 "$PYTHON" scripts/gpu_check.py "$@"
