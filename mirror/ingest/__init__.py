"""In-flight view of containerd's ingests: which digests are being written, how far along."""
