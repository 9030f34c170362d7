"""`python -m bench relay-cpu`: the proving relay's movers alone, without HTTP or a DHT.

A holder process `sendfile`s a random blob to every connection; a client process
reads it; between them this process relays it with `copy_verified` (recv into
buffers, hash on a worker thread, send) or `tee_verified` (splice, `tee(2)`, read
and hash the duplicate on a worker thread), proving every byte against the digest
as the mirror does. `direct` is the client reading the holder. Rounds of the three
are interleaved. For each: MiB/s, the relay's CPU seconds per GiB (all its
threads) and the whole machine's (every process, interrupts and softirqs), so
what the relay adds to a direct read shows on its own.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench.measure import MIB, summarize
from bench.procstat import cpu_seconds, system_busy_seconds
from bench.result_file import write_json
from mirror.mirroring import movers

MODES = ("direct", "copy", "tee")
GIB = 1024 * MIB

# Serves the file named in argv[1] whole to every connection; prints its port.
HOLDER = r"""
import os, socket, sys
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(8)
print(server.getsockname()[1], flush=True)
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
while True:
    conn, _ = server.accept()
    offset = 0
    while offset < size:
        offset += os.sendfile(conn.fileno(), fd, offset, size - offset)
    conn.close()
"""

# Reads argv[2] whole bodies from port argv[1]; prints the bytes read.
CLIENT = r"""
import socket, sys
buffer = bytearray(1 << 20)
total = 0
for _ in range(int(sys.argv[2])):
    conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    while got := conn.recv_into(buffer):
        total += got
    conn.close()
print(total)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--blob-mib", type=int, default=256, help="blob size (default 256)")
    parser.add_argument("--bodies", type=int, default=6, help="bodies per run (default 6)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each mode (default 3)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/relay_cpu.json"))


def _start_holder(blob: Path) -> tuple[subprocess.Popen[str], int]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(blob)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    return holder, int(holder.stdout.readline())


def _start_client(port: int, bodies: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(port), str(bodies)], stdout=subprocess.PIPE, text=True
    )


def _client_bytes(client: subprocess.Popen[str]) -> int:
    out, _ = client.communicate(timeout=600)
    if client.returncode != 0:
        raise RuntimeError(f"the client failed ({client.returncode})")
    return int(out)


async def _relay(mode: str, holder_port: int, size: int, hex_digest: str, bodies: int) -> int:
    """Relay `bodies` bodies to a client process; returns the bytes it read."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    client = _start_client(listener.getsockname()[1], bodies)
    mover = movers.tee_verified if mode == "tee" else movers.copy_verified
    for _ in range(bodies):
        to_client, _ = await listener.accept()
        to_holder = trio.socket.socket()
        await to_holder.connect(("127.0.0.1", holder_port))
        with to_client, to_holder:
            peer = movers.PeerSide(to_holder, 10.0, None)
            hasher = hashlib.sha256()
            await mover(peer, to_client, b"", size, hasher, hex_digest, 10.0)
    listener.close()
    return await trio.to_thread.run_sync(_client_bytes, client)


def _one_run(
    mode: str, holder_port: int, size: int, hex_digest: str, bodies: int
) -> dict[str, float]:
    # Read before and after, not sampled: a sampling thread would run in the relay's
    # own process and be counted as its CPU.
    relay_before, busy_before = cpu_seconds(os.getpid()), system_busy_seconds()
    started = time.monotonic()
    if mode == "direct":
        moved = _client_bytes(_start_client(holder_port, bodies))
    else:
        moved = trio.run(_relay, mode, holder_port, size, hex_digest, bodies)
    elapsed = time.monotonic() - started
    relay = cpu_seconds(os.getpid()) - relay_before
    busy = system_busy_seconds() - busy_before
    if moved != size * bodies:
        raise RuntimeError(f"{mode}: the client read {moved} of {size * bodies} bytes")
    gib = moved / GIB
    return {
        "mib_s": moved / MIB / elapsed,
        "relay_cpu_s_per_gib": relay / gib if mode != "direct" else 0.0,
        "machine_cpu_s_per_gib": busy / gib,
    }


def run(args: argparse.Namespace) -> int:
    size = args.blob_mib * MIB
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="relay-cpu-") as scratch:
        blob = Path(scratch) / "blob"
        data = os.urandom(size)
        blob.write_bytes(data)
        hex_digest = hashlib.sha256(data).hexdigest()
        del data
        holder, port = _start_holder(blob)
        try:
            for round_ in range(args.repeat):
                for mode in MODES:
                    sample = _one_run(mode, port, size, hex_digest, args.bodies)
                    results[mode].append(sample)
                    print(
                        f"==> round {round_ + 1}/{args.repeat} {mode:6}: {sample['mib_s']:,.0f}"
                        f" MiB/s, relay {sample['relay_cpu_s_per_gib']:.2f} CPU s/GiB,"
                        f" machine {sample['machine_cpu_s_per_gib']:.2f}",
                        flush=True,
                    )
        finally:
            holder.kill()
            holder.wait()
    _print_table(results)
    write_json(args.out, {"blob_mib": args.blob_mib, "bodies": args.bodies, "runs": results})
    print(f"results written to {args.out}")
    return 0


def _print_table(results: dict[str, list[dict[str, float]]]) -> None:
    print()
    print("| mode | MiB/s | relay CPU s/GiB | machine CPU s/GiB |")
    print("|---|---|---|---|")
    for mode, samples in results.items():
        cells: list[Any] = [
            summarize(sample[key] for sample in samples).format(digits)
            for key, digits in (
                ("mib_s", 0),
                ("relay_cpu_s_per_gib", 2),
                ("machine_cpu_s_per_gib", 2),
            )
        ]
        print(f"| {mode} | {' | '.join(cells)} |")
