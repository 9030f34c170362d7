"""The pure parts of `python -m bench serve`: wrk output, statistics, ratios and targets."""

from __future__ import annotations

import functools
import http.server
import subprocess
import threading
from pathlib import Path

import pytest

from bench.measure import MIB, Check, paired_ratios, summarize
from bench.serve_plan import (
    DISTRIBUTION,
    MIRROR,
    NGINX,
    Sample,
    client_argv,
    curl_result,
    scenarios,
    wrk_argv,
)
from bench.serve_report import checks, ratios, results_table, summaries
from bench.wrk import ParseError, parse_duration, parse_size, parse_wrk

BLOB_OUTPUT = """\
Running 1s test @ http://127.0.0.1:53247/v2/bench/blob/blobs/sha256:d1f8
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   244.95ms   66.48ms 337.48ms   75.00%
    Req/Sec     4.50      2.08     7.00     50.00%
  Latency Distribution
     50%  249.03ms
     75%  337.48ms
     90%  337.48ms
     99%    1.20s
  4 requests in 1.10s, 1.10GB read
Requests/sec:      3.65
Transfer/sec:      1.00GB
WRK_DONE {"duration_us":1097131,"requests":4,"bytes":1183451481,"connect":0,"read":0,\
"write":0,"status":0,"timeout":0}
"""

MANIFEST_404_OUTPUT = """\
Running 1s test @ http://127.0.0.1:53579/v2/bench/blob/manifests/sha256:0000?ns=x
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.56ms    3.49ms  52.36ms   91.89%
    Req/Sec     5.20k     1.62k    9.99k    76.19%
  Latency Distribution
     50%    2.66ms
     75%    3.83ms
     90%    6.17ms
     99%  820.00us
  10871 requests in 1.10s, 2.58MB read
  Socket errors: connect 0, read 3, write 1, timeout 2
  Non-2xx or 3xx responses: 10871
Requests/sec:   9882.58
Transfer/sec:      2.35MB
"""


def test_sizes_are_1024_based() -> None:
    assert parse_size("512B") == 512
    assert parse_size("2.35MB") == pytest.approx(2.35 * MIB)
    assert parse_size("1.00GB") == 1024 * MIB


def test_durations_cover_every_wrk_unit() -> None:
    assert parse_duration("820.00us") == pytest.approx(820e-6)
    assert parse_duration("3.56ms") == pytest.approx(3.56e-3)
    assert parse_duration("1.10s") == pytest.approx(1.1)
    assert parse_duration("2.00m") == pytest.approx(120.0)


@pytest.mark.parametrize("bad", ["", "1.0 GB", "GB", "12XB", "3.5"])
def test_malformed_sizes_are_rejected(bad: str) -> None:
    with pytest.raises(ParseError):
        parse_size(bad)


def test_blob_output_uses_the_exact_done_totals() -> None:
    result = parse_wrk(BLOB_OUTPUT)
    assert result.requests == 4
    assert result.duration_s == pytest.approx(1.1)
    assert result.requests_per_s == pytest.approx(3.65)
    assert result.transfer_per_s == pytest.approx(1024 * MIB)
    assert result.latency_percentiles_s == pytest.approx(
        {"50": 0.24903, "75": 0.33748, "90": 0.33748, "99": 1.2}
    )
    assert result.exact is not None and result.exact["bytes"] == 1183451481
    # bytes / duration from the hook, not the rounded "1.00GB" of Transfer/sec.
    assert result.mib_per_s == pytest.approx(1183451481 / MIB / 1.097131)
    assert result.errors == 0


def test_without_the_hook_transfer_sec_is_used() -> None:
    text = BLOB_OUTPUT.split("WRK_DONE")[0]
    result = parse_wrk(text)
    assert result.exact is None
    assert result.mib_per_s == pytest.approx(1024.0)


def test_errors_and_non_2xx_are_counted() -> None:
    result = parse_wrk(MANIFEST_404_OUTPUT)
    assert result.socket_errors == {"connect": 0, "read": 3, "write": 1, "timeout": 2}
    assert result.non_2xx_3xx == 10871
    assert result.errors == 10871 + 6
    assert result.requests_per_s == pytest.approx(9882.58)
    assert result.latency_percentiles_s["99"] == pytest.approx(820e-6)


def test_output_without_a_summary_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_summary_is_median_min_max() -> None:
    odd = summarize([3.0, 1.0, 2.0])
    assert (odd.median, odd.min, odd.max, odd.n) == (2.0, 1.0, 3.0, 3)
    assert summarize([4.0, 1.0, 2.0, 10.0]).median == 3.0
    assert summarize([5.0]).format() == "5 (5-5)"
    assert summarize([1500.0, 1000.0, 2000.0]).format() == "1,500 (1,000-2,000)"
    with pytest.raises(ValueError):
        summarize([])


def test_paired_ratios_skip_a_zero_reference() -> None:
    assert paired_ratios([2.0, 3.0, 4.0], [1.0, 0.0, 2.0]) == [2.0, 2.0]
    with pytest.raises(ValueError):
        paired_ratios([1.0], [1.0, 2.0])


def test_checks_compare_at_their_boundary() -> None:
    assert Check("blob", 1.0, ">=", 1.0).passed
    assert not Check("blob", 0.99, ">=", 1.0).passed
    assert Check("rss", 99.9, "<", 100.0, " MiB").passed
    assert not Check("rss", 100.0, "<", 100.0, " MiB").passed
    assert Check("rps", 0.17, ">=", 0.6).line() == "[FAIL] rps: 0.17x (target >= 0.6x)"
    with pytest.raises(ValueError):
        _ = Check("x", 1.0, "==", 1.0).passed


def _sample(scenario: str, server: str, repeat: int, value: float, rss: float = 40.0) -> Sample:
    return Sample(
        scenario=scenario,
        server=server,
        repeat=repeat,
        value=value,
        unit="req/s",
        argv=[],
        wrk={},
        client_cpu_s=0.0,
        client_wall_s=1.0,
        client_cpu_pct=0.0,
        server_cpu_pct=0.0,
        softirq_cpu_pct=0.0,
        other_cpu_pct=0.0,
        rss_max_mib={NGINX: 10.0, DISTRIBUTION: 30.0, MIRROR: rss},
        rss_samples_kib={},
        output="",
    )


def _run(values: dict[tuple[str, str], list[float]], rss: float = 40.0) -> list[Sample]:
    return [
        _sample(scenario, server, i, v, rss)
        for (scenario, server), vs in values.items()
        for i, v in enumerate(vs)
    ]


SAMPLES = _run(
    {
        ("blob-1", NGINX): [2000.0, 2100.0, 1900.0],
        ("blob-1", DISTRIBUTION): [1500.0, 1600.0, 1400.0],
        ("blob-1", MIRROR): [2100.0, 1900.0, 2000.0],
        ("blob-8", NGINX): [2500.0, 2500.0, 2500.0],
        ("blob-8", DISTRIBUTION): [1900.0, 1900.0, 1900.0],
        ("blob-8", MIRROR): [2400.0, 2450.0, 2300.0],
        ("manifest-32", NGINX): [80000.0, 75000.0, 85000.0],
        ("manifest-32", DISTRIBUTION): [1500.0, 1400.0, 1600.0],
        ("manifest-32", MIRROR): [16000.0, 15000.0, 17000.0],
        ("tag-32", MIRROR): [14000.0, 13000.0, 15000.0],
    }
)


def test_ratios_are_run_by_run_with_the_ratio_of_medians_kept() -> None:
    plan = scenarios(256)
    stats = summaries(SAMPLES, plan)
    assert stats["manifest-32"][MIRROR].median == 16000.0
    found = {(r.scenario, r.denominator): r for r in ratios(SAMPLES, stats)}
    blob = found[("blob-1", NGINX)]
    assert blob.of_medians == pytest.approx(1.0)
    # run by run: 2100/2000, 1900/2100, 2000/1900
    assert blob.paired.median == pytest.approx(2100 / 2000)
    assert blob.paired.min == pytest.approx(1900 / 2100)
    assert blob.paired.max == pytest.approx(2000 / 1900)
    assert found[("manifest-32", DISTRIBUTION)].of_medians == pytest.approx(16000 / 1500)
    assert ("tag-32", NGINX) not in found


def test_targets_from_one_run() -> None:
    stats = summaries(SAMPLES, scenarios(256))
    result = {c.name: c.passed for c in checks(ratios(SAMPLES, stats), {MIRROR: 41.0})}
    assert result == {
        "blob throughput, 1 client (wrk), mirror / nginx": True,  # 1.05x run by run
        "blob throughput, 8 clients (wrk), mirror / nginx": False,  # 2400 / 2500
        "manifest requests/s, mirror / Distribution": True,  # 10.7x
        "mirror VmRSS max": True,
    }
    assert not next(c for c in checks([], {MIRROR: 120.0}) if c.unit == " MiB").passed


def test_table_has_a_row_per_scenario_and_marks_missing_servers() -> None:
    plan = scenarios(256)
    stats = summaries(SAMPLES, plan)
    lines = results_table(plan, stats, ratios(SAMPLES, stats))
    # A row per scenario measured (these samples have no curl runs).
    assert len(lines) == 2 + len([sc for sc in plan if sc.client == "wrk"])
    assert lines[4].startswith("| manifest by digest, 32 conns (req/s) | 80,000 (75,000-85,000) |")
    assert "| 0.20x (0.20-0.20) | 10.67x (10.62-10.71) |" in lines[4]
    assert lines[5] == (
        "| manifest by tag, 32 conns (req/s) | n/a | n/a | 14,000 (13,000-15,000) | n/a | n/a |"
    )


def test_wrk_command_lines() -> None:
    blob, blob8, curl1, curl8, manifest, _ = scenarios(256)
    script = Path("done.lua")
    argv = wrk_argv(blob, "http://127.0.0.1:1/b", 3, script)
    assert argv[:4] == ["wrk", "-t1", "-c1", "-d3s"]
    assert "--latency" in argv and "-H" not in argv and argv[-1] == "http://127.0.0.1:1/b"
    assert wrk_argv(blob8, "u", 3, script)[1:3] == ["-t2", "-c8"]
    argv = wrk_argv(manifest, "u", 5, script)
    assert argv[1:4] == ["-t2", "-c32", "-d5s"]
    accept = argv[argv.index("-H") + 1]
    assert accept.startswith("Accept: ") and "application/vnd.oci.image.manifest.v1+json" in accept
    loops = client_argv(curl8, "http://127.0.0.1:1/b", 3, script)
    assert loops[:2] == ["sh", "-c"] and loops[2].count('sh -c "$0" curl-loop 3 "$1"') == 8
    assert loops[-1] == "http://127.0.0.1:1/b"
    assert client_argv(curl1, "u", 3, script)[2].count("sh -c") == 1


def test_curl_loops_are_summed_over_the_longest_loop() -> None:
    output = (
        "curl-loop bytes=2000 requests=2 ns=3000000000\n"
        "curl-loop bytes=1000 requests=1 ns=2000000000\n"
    )
    result = curl_result(output)
    assert result.requests == 3 and result.mib_per_s == pytest.approx(3000 / 2**20 / 3.0)


def test_curl_loops_run_against_a_real_server(tmp_path: Path) -> None:
    (tmp_path / "blob").write_bytes(b"x" * 100_000)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/blob"
        scenario = next(sc for sc in scenarios(256) if sc.key == "blob-8-curl")
        argv = client_argv(scenario, url, 1, Path("unused.lua"))
        output = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    finally:
        server.shutdown()
    result = curl_result(output)
    assert result.requests > 0 and result.bytes_read == 100_000 * result.requests
    assert len([line for line in output.splitlines() if line.startswith("curl-loop ")]) == 8
