"""Tests of the containerd control-plane client (mirror.containerd)."""
