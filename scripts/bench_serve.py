"""Service benchmark: nmt-serve under 1, 8, 32 and 64 concurrent clients against nmt-translate.

    python scripts/bench_serve.py runs/ende_bf16_12min/checkpoints/best.pt --seconds 20
Starts `nmt-serve` on a free loopback port; at each level, N clients (asyncio + httpx) send single
sentences of the test set (Multi30k test_2016_flickr by default) in a loop for --seconds. Prints
one JSON line per level: sentences/s, latency percentiles, errors (non-200 answers), mismatches
(answers that differ from nmt-translate's line for that sentence), the search steps the service ran
(a second, and sentences in each on average, from /metrics), the server's RSS, and its ratio to
nmt-translate on the same sentences run just before the level (its translation rate after loading:
the baseline, interleaved with the levels because this machine drifts by 10-20% within minutes);
then one line with every baseline run and their median. --soak-minutes M adds a level of 64 clients
for M minutes and reports the server's RSS after the first minute and at the end. --overload-seconds S
adds a flood: 64 clients each sending requests of 64 sentences back to back (4,096 sentences
offered against the default queue of 1,024), retrying at once when refused, while a probe asks
/healthz every 50 ms; it reports the answers by status, the probe's latency and the server's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gzip
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory (VmRSS) or its peak (VmHWM) of a process and its children (the service's
    model processes), in MB."""
    total = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            total += int(line.split()[1]) / 1024
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        total += rss_mb(int(child), field)
    return total


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def baseline(checkpoint: Path, source: Path, flags: list[str]) -> tuple[list[str], float, float]:
    """nmt-translate's lines, its translation rate (sentences/s after loading) and process wall time."""
    command = [sys.executable, "-m", "nmt.translate", "-m", str(checkpoint), "-i", str(source), *flags]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=True)
    wall = time.monotonic() - started
    rate = float(re.findall(r"([\d.]+) sentences/s", result.stderr)[-1])
    return result.stdout.splitlines(), rate, wall


async def steps_so_far(client: httpx.AsyncClient, url: str) -> tuple[float, float]:
    """The service's search steps so far and the sentences in them, from /metrics (all models)."""
    text = (await client.get(f"{url}/metrics")).raise_for_status().text
    totals = {"count": 0.0, "sum": 0.0}
    for name, value in re.findall(r"^nmt_batch_sentences_(count|sum)\{[^}]*\} (\S+)$", text, re.MULTILINE):
        totals[name] += float(value)
    return totals["count"], totals["sum"]


async def level(
    url: str, clients: int, seconds: float, sentences: list[str], expected: list[str], pid: int
) -> dict[str, float]:
    latencies: list[float] = []
    errors = mismatches = 0
    deadline = time.monotonic() + seconds

    async def client_loop(client: httpx.AsyncClient, start: int) -> None:
        nonlocal errors, mismatches
        index = start
        while time.monotonic() < deadline:
            line = index % len(sentences)
            sent = time.monotonic()
            response = await client.post(f"{url}/v1/translate", json={"text": sentences[line]})
            latencies.append(time.monotonic() - sent)
            if response.status_code != 200:
                errors += 1
            elif response.json()["translations"][0]["text"] != expected[line]:
                mismatches += 1
            index += clients

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        steps_before, sentences_before = await steps_so_far(client, url)
        started = time.monotonic()
        await asyncio.gather(*(client_loop(client, start) for start in range(clients)))
        elapsed = time.monotonic() - started
        steps_after, sentences_after = await steps_so_far(client, url)
    steps = steps_after - steps_before
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": len(latencies),
        "sentences_per_second": round(len(latencies) / elapsed, 1),
        "latency_p50_ms": round(1000 * cuts[49], 1),
        "latency_p95_ms": round(1000 * cuts[94], 1),
        "latency_p99_ms": round(1000 * cuts[98], 1),
        "errors": errors,
        "mismatches": mismatches,
        "steps_per_second": round(steps / elapsed, 1),
        "sentences_per_step": round((sentences_after - sentences_before) / steps, 1) if steps else 0.0,
        "server_rss_mb": round(rss_mb(pid), 1),
        "server_peak_rss_mb": round(rss_mb(pid, "VmHWM"), 1),
    }


async def overload(url: str, seconds: float, sentences: list[str], pid: int) -> dict[str, object]:
    statuses: collections.Counter[int] = collections.Counter()
    probes: list[float] = []
    probe_errors = 0
    deadline = time.monotonic() + seconds

    async def client_loop(client: httpx.AsyncClient, start: int) -> None:
        texts = [sentences[(start + i) % len(sentences)] for i in range(64)]
        while time.monotonic() < deadline:
            try:
                statuses[(await client.post(f"{url}/v1/translate", json={"text": texts})).status_code] += 1
            except httpx.TimeoutException:
                statuses[0] += 1

    async def probe_loop() -> None:
        nonlocal probe_errors
        async with httpx.AsyncClient(timeout=10) as client:
            while time.monotonic() < deadline:
                sent = time.monotonic()
                response = await client.get(f"{url}/healthz")
                probes.append(time.monotonic() - sent)
                probe_errors += response.status_code != 200
                await asyncio.sleep(0.05)

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await asyncio.gather(probe_loop(), *(client_loop(client, 64 * start) for start in range(64)))
    cuts = statistics.quantiles(probes, n=100)
    return {
        "overload_seconds": seconds,
        "answers_by_status": {str(status): count for status, count in sorted(statuses.items())},  # 0: timed out
        "healthz_probes": len(probes),
        "healthz_errors": probe_errors,
        "healthz_p50_ms": round(1000 * cuts[49], 1),
        "healthz_p99_ms": round(1000 * cuts[98], 1),
        "healthz_max_ms": round(1000 * max(probes), 1),
        "server_peak_rss_mb": round(rss_mb(pid, "VmHWM"), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "multi30k")
    parser.add_argument("--source", default="test_2016_flickr.en.gz", help="file in --data-dir, one sentence a line")
    parser.add_argument("--seconds", type=float, default=20.0, help="per level")
    parser.add_argument("--levels", default="1,8,32,64", help="concurrent clients, comma-separated")
    parser.add_argument("--soak-minutes", type=float, default=0.0, help="then 64 clients for this long")
    parser.add_argument("--overload-seconds", type=float, default=0.0, help="then a flood for this long")
    parser.add_argument("--serve-flags", default="", help="extra nmt-serve flags, e.g. '--max-wait-ms 10'")
    args = parser.parse_args()
    source = args.data_dir / args.source
    if not source.exists():
        sys.exit(f"{source}: not found (the Multi30k corpus lives in ../shared/data/multi30k; or give --data-dir)")
    with gzip.open(source, "rt", encoding="utf-8") if source.suffix == ".gz" else source.open() as file:
        sentences = file.read().splitlines()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "nmt.serve", "-m", str(args.checkpoint), "--port", str(port),
             *args.serve_flags.split()],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            while True:
                if server.poll() is not None:
                    log.seek(0)
                    sys.exit(f"nmt-serve exited: {log.read()[-2000:]}")
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            rates, walls = [], []
            for clients in (int(n) for n in args.levels.split(",")):
                expected, rate, wall = baseline(args.checkpoint, source, [])
                rates.append(rate)
                walls.append(round(wall, 1))
                result = asyncio.run(level(url, clients, args.seconds, sentences, expected, server.pid))
                print(json.dumps({**result, "nmt_translate_sentences_per_second": rate,
                                  "ratio_to_nmt_translate": round(result["sentences_per_second"] / rate, 3)}),
                      flush=True)  # fmt: skip
            if args.soak_minutes:
                first = asyncio.run(level(url, 64, 60, sentences, expected, server.pid))
                rest = asyncio.run(level(url, 64, args.soak_minutes * 60 - 60, sentences, expected, server.pid))
                print(json.dumps({"soak_minutes": args.soak_minutes, "after_first_minute": first, "end": rest}))
            if args.overload_seconds:
                print(json.dumps(asyncio.run(overload(url, args.overload_seconds, sentences, server.pid))))
            print(json.dumps({"baseline": "nmt-translate", "sentences": len(sentences), "runs": rates,
                              "median_sentences_per_second": statistics.median(rates),
                              "process_seconds": walls}))  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
