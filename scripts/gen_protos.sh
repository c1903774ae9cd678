#!/usr/bin/env bash
# Regenerate the gRPC stubs from protos/ into the package.
#
# The proto folders mirror the Python package, so protoc's absolute imports
# (from common_operations.grpc.v1 import operations_pb2) are correct as generated.
# mypy-protobuf's plugins (protoc-gen-mypy, protoc-gen-mypy_grpc) sit next to the interpreter
# and must be on PATH.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
bin_dir="$(cd "$(dirname "$(command -v "$PYTHON")")" && pwd)"
export PATH="$bin_dir:$PATH"

"$PYTHON" -m grpc_tools.protoc -I protos \
  --python_out=. --grpc_python_out=. \
  --mypy_out=. --mypy_grpc_out=. \
  protos/common_operations/grpc/v1/operations.proto

# protoc writes no __init__.py; the generated folders must be regular packages.
touch common_operations/grpc/__init__.py common_operations/grpc/v1/__init__.py
