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


CURL_LOOP = """
end=$(( $(date +%s%N) + $1 * 1000000000 ))
total=0; count=0; start=$(date +%s%N)
while [ "$(date +%s%N)" -lt "$end" ]; do
  n=$(curl -sS --fail -o /dev/null -w '%{size_download}' "$2") || exit 1
  total=$((total + ${n%.*})); count=$((count + 1))
done
echo "curl-loop bytes=$total requests=$count ns=$(( $(date +%s%N) - start ))"
"""


def curl_loop_argv(url: str, clients: int, duration: int) -> list[str]:
    """`clients` curl loops side by side for `duration` seconds, one process tree (its
    CPU is the client's): one result line per loop."""
    loops = " & ".join(f'sh -c "$0" curl-loop {duration} "$1"' for _ in range(clients))
    return ["sh", "-c", f"{loops}; wait", CURL_LOOP, url]


def parse_curl_loops(output: str) -> tuple[int, int, float]:
    """(bytes, requests, seconds) over every loop: bytes and requests summed, the time
    the longest loop took."""
    total = requests = 0
    seconds = 0.0
    lines = [line for line in output.splitlines() if line.startswith("curl-loop ")]
    if not lines:
        raise CurlError(f"no curl loop finished: {output[-500:]}")
    for line in lines:
        fields = dict(part.split("=", 1) for part in line.split()[1:])
        total += int(fields["bytes"])
        requests += int(fields["requests"])
        seconds = max(seconds, int(fields["ns"]) / 1e9)
    return total, requests, seconds


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
