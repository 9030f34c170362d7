"""Our own subset of containerd's API protos and their generated *_pb2 modules (see generate.sh)."""
