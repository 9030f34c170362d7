#!/bin/sh
# Regenerates the *_pb2.py modules (and their .pyi type stubs) next to their .proto sources.
#
# Protos are compiled from the repository root so that they import each other
# as "mirror/containerd/proto/x.proto": the generated code then imports
# `mirror.containerd.proto.x_pb2` (no import rewriting), and the descriptor
# pool sees file names that cannot clash with another package's "types.proto".
set -eu
cd "$(dirname "$0")/../../.."
PYTHON="${PYTHON:-.venv/bin/python}"
"$PYTHON" -m grpc_tools.protoc \
    -I . \
    -I "$("$PYTHON" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')" \
    --python_out=. \
    --pyi_out=. \
    mirror/containerd/proto/*.proto
