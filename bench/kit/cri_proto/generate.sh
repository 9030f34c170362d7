#!/bin/sh
# Regenerates api_pb2.py, api_pb2.pyi and api_pb2_grpc.py from api.proto.
#
# Compiled from the repository root so that the generated code imports
# `bench.kit.cri_proto.api_pb2` (no import rewriting) and the descriptor pool
# sees the file as "bench/kit/cri_proto/api.proto", which cannot clash with
# another package's "api.proto".
set -eu
cd "$(dirname "$0")/../../.."
PYTHON="${PYTHON:-.venv/bin/python}"
"$PYTHON" -m grpc_tools.protoc \
    -I . \
    --python_out=. \
    --pyi_out=. \
    --grpc_python_out=. \
    bench/kit/cri_proto/api.proto
