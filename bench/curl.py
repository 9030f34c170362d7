"""A client that follows redirects: `curl -L` in a loop, for `bench proxy`'s redirect
mode (wrk reads one host and never follows a `Location`).

`clients` loops run side by side for `duration` seconds, each fetching the URL
again and again on a fresh connection (as containerd opens one per layer); the
rate is every byte received over the wall time.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

MIB = 1024 * 1024


class CurlError(RuntimeError):
    pass


def curl_available() -> bool:
    return shutil.which("curl") is not None


def fetch_bytes(url: str, timeout: float = 120.0) -> int:
    """One GET, redirects followed; the body's size (raises CurlError on a failure)."""
    result = subprocess.run(
        ["curl", "-sS", "-L", "--fail", "-o", "/dev/null", "-w", "%{size_download}", url],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise CurlError(f"curl {url}: {result.stderr.strip() or result.returncode}")
    return int(float(result.stdout))


def curl_rate(url: str, clients: int, duration: float) -> float:
    """MiB/s over `clients` loops of whole downloads for `duration` seconds (each loop
    finishes the download it started)."""
    received = [0] * clients
    errors: list[BaseException] = []
    stop_at = time.monotonic() + duration

    def loop(i: int) -> None:
        try:
            while time.monotonic() < stop_at:
                received[i] += fetch_bytes(url)
        except (CurlError, subprocess.TimeoutExpired, ValueError) as exc:
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    if errors:
        raise CurlError(str(errors[0]))
    return sum(received) / MIB / elapsed
