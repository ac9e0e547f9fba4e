"""Metadata requests and CPU per analytics event, against the metadata service on loopback.

    METAFLOW_USER=dev .venv/bin/python benchmarks/analytics_events.py [--events 500]
        [--others 2000] [--json out.json]

What it does, in a private temporary folder (removed at the end; nothing outside it is touched):
1. Starts Metaflow's metadata service on loopback (cluster/metadata.py) and, in front of it, a
   counting proxy: every request this process's Metaflow client makes goes through the proxy,
   which counts requests and the bytes answered.
2. Runs one real stand-in flow named TorchPerfFlow (no torch) whose start step stores the
   ``config`` and ``result`` (torchperf/result.py) of every variant as artifacts of their own.
3. Records, through the service's REST API (directly, not counted): ``--others`` runs of other
   sweeps, then for each event one run of the sweep in the state a variant announces its success
   from: its start task done, with that variant's config and result, its end task not yet
   successful. The runs' artifact records point at the stand-in's stored artifacts.
4. For each of ``--events`` events, does what the Sensor-triggered SweepAnalyticsFlow run does:
   reads the announced run on top of the previous aggregate, derives the metrics and fills the
   card (``analytics.collect``, ``derive``, ``to_frame``, ``report.fill_card``); then marks the
   run's end task successful, as the variant's end step does. Counted per event: requests and
   bytes through the proxy, CPU seconds of this thread and of the metadata service.
5. Runs the sweep's final aggregation (the previous aggregate, then a listing of the tag, as
   the flow does it) and checks that it holds every variant with its figure, as does a listing
   read from nothing.

The previous aggregate is carried in memory from one event to the next; the flow reads it from
the previous analytics run (``analytics.previous_state``: one listing of SweepAnalyticsFlow runs
and one task's artifacts), which is not part of these counts.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
FLOW = "TorchPerfFlow"

STAND_IN = textwrap.dedent(
    '''
    """Stand-in for torchtest.py: every variant's config and result as artifacts, no torch."""
    import json
    import os

    from metaflow import FlowSpec, project, step


    @project(name="torchperf")
    class TorchPerfFlow(FlowSpec):
        @step
        def start(self):
            from analytics_events import variant

            for i in range(int(os.environ["BENCH_VARIANTS"])):
                config, result = variant(i)
                setattr(self, f"config_{i}", config)
                setattr(self, f"result_{i}", result)
            self.next(self.end)

        @step
        def end(self):
            pass


    if __name__ == "__main__":
        TorchPerfFlow()
    '''
)


def variant(i: int) -> tuple[dict, dict]:
    """The i-th variant's config and result: 10 cpus per tensor_dim, made-up figures."""
    sys.path.insert(0, str(ROOT))
    from torchperf.result import Result

    cpu, tensor_dim = 1 + i % 10, 64 * (1 + i // 10)
    gflops = 100.0 * cpu**0.9 + i / 1000  # distinct per variant, to check the final card
    samples = [gflops * (1 + d) for d in (-0.01, -0.005, 0.0, 0.005, 0.01)]
    result = Result.from_dict(
        {
            "gflops": gflops,
            "gflops_samples": samples,
            "gflops_q1": samples[1],
            "gflops_q3": samples[3],
            "iqr_ratio": 0.01,
            "noisy": False,
            "gflops_ci": [samples[0], samples[-1]],
            "gflops_ci_level": 0.94,
            "squarings_per_second": 1.0,
            "calls_per_sample": 1,
            "threads": cpu,
            "tensor_dim": tensor_dim,
            "device": "cpu",
            "torch_version": "2.13.0",
            "measure_seconds": 1.0,
            "warmup_seconds": 0.1,
            "warmup_settled": True,
            "env": {"cpu_model": "stand-in", "torch_version": "2.13.0"},
        }
    )
    config = {"cpu": cpu, "tensor_dim": tensor_dim, "device": "cpu", "measure_seconds": 1.0}
    return config, result.to_dict()


# ---- The counting proxy ------------------------------------------------------------------


class Counter:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.bytes = 0
        self.paths: list[str] = []

    def snapshot(self) -> tuple[int, int]:
        with self.lock:
            return self.requests, self.bytes


def start_proxy(upstream: str, counter: Counter) -> tuple[ThreadingHTTPServer, str]:
    """An HTTP proxy on loopback to ``upstream`` that counts what passes through it."""
    target = urlsplit(upstream)
    hop = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            # Headers and body go out in two writes: without this, Nagle's algorithm holds the
            # body until the client's delayed ACK (about 40 ms a request).
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().setup()

        def _forward(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            try:
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                data = answer.read()
            finally:
                connection.close()
            with counter.lock:
                counter.requests += 1
                counter.bytes += len(data)
                counter.paths.append(f"{self.command} {self.path}")
            self.send_response(answer.status)
            for key, value in answer.getheaders():
                if key.lower() not in hop:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _forward

        def log_message(self, *_):  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


# ---- Recording runs through the service's REST API ------------------------------------------


class Service:
    """The metadata service's REST API, called directly (not through the counting proxy)."""

    def __init__(self, url: str):
        self.target = urlsplit(url)

    def call(self, method: str, path: str, body=None):
        connection = http.client.HTTPConnection(self.target.hostname, self.target.port, timeout=60)
        try:
            data = None if body is None else json.dumps(body)
            headers = {"Content-Type": "application/json"}
            connection.request(method, path, body=data, headers=headers)
            answer = connection.getresponse()
            text = answer.read()
        finally:
            connection.close()
        if answer.status >= 400 and answer.status != 409:
            raise RuntimeError(f"{method} {path}: HTTP {answer.status} {text[:200]!r}")
        return json.loads(text) if text and text[:1] in b"[{" else None

    def run(self, run_id: str, tags: list[str], system_tags: list[str], ts: int) -> None:
        body = {"run_number": run_id, "user_name": "bench", "tags": tags}
        self.call("POST", f"/flows/{FLOW}/run", body | {"system_tags": system_tags, "ts_epoch": ts})

    def task(self, run_id: str, step: str, task_id: str, ts: int) -> None:
        body = {"task_id": task_id, "user_name": "bench", "ts_epoch": ts}
        self.call("POST", f"/flows/{FLOW}/runs/{run_id}/steps/{step}/step", body)
        self.call("POST", f"/flows/{FLOW}/runs/{run_id}/steps/{step}/task", body)

    def artifacts(self, run_id: str, step: str, task_id: str, records: list[dict]) -> None:
        records = [
            r | {"run_number": run_id, "step_name": step, "task_id": task_id} for r in records
        ]
        path = f"/flows/{FLOW}/runs/{run_id}/steps/{step}/tasks/{task_id}/artifact"
        self.call("POST", path, records)


class Template:
    """The stand-in run's artifact records, to be given to each recorded run."""

    def __init__(self, service: Service, run_id: str):
        def records(step: str) -> dict[str, dict]:
            (task,) = service.call("GET", f"/flows/{FLOW}/runs/{run_id}/steps/{step}/tasks")
            path = f"/flows/{FLOW}/runs/{run_id}/steps/{step}/tasks/{task['task_id']}/artifacts"
            return {r["name"]: r for r in service.call("GET", path)}

        self.start, self.end = records("start"), records("end")
        self.system_tags = service.call("GET", f"/flows/{FLOW}/runs/{run_id}")["system_tags"]

    def of(self, records: dict[str, dict], i: int, finished: bool) -> list[dict]:
        """The records of a run of variant ``i``: its own config and result, the stand-in's
        bookkeeping artifacts; ``_success`` and ``_task_ok`` only once ``finished``."""
        keep = [
            r
            for name, r in records.items()
            if not name.startswith(("config_", "result_"))
            and (finished or name not in ("_success", "_task_ok"))
        ]
        named = [records[f"config_{i}"] | {"name": "config"}]
        named += [records[f"result_{i}"] | {"name": "result"}]
        return keep + named


def stand_in(scratch: Path, env: dict, variants: int) -> str:
    """One real stand-in run that stores every variant's artifacts; its run id."""
    flow = scratch / "standin" / "torchtest.py"
    flow.parent.mkdir()
    flow.write_text(STAND_IN, encoding="utf-8")
    env = env | {
        "BENCH_VARIANTS": str(variants),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT)]),
    }
    ids = scratch / "run_id"
    done = subprocess.run(
        [sys.executable, str(flow), "--quiet", "--no-pylint", "run", "--run-id-file", str(ids)],
        cwd=flow.parent,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the stand-in run failed:\n{done.stderr[-3000:]}")
    return ids.read_text().strip()


# ---- The benchmark -------------------------------------------------------------------------


def service_cpu(pid: int) -> float:
    """CPU seconds (user + system) the metadata service's process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class FakeCard(list):
    """current.card[...] as fill_card uses it: components appended in order."""


def aggregate(tag: str, previous, announced: list[str], planned: int):
    """What SweepAnalyticsFlow's start step does with what it read, charts' PNGs aside."""
    from torchperf import analytics, report

    seen = analytics.collect(tag, previous, announced=announced, wait_seconds=60)
    results = analytics.to_frame(analytics.derive(seen.rows.values()))
    card = FakeCard()
    report.fill_card(
        card,
        tag=tag,
        results=results,
        ended=seen.ended,
        running=seen.running,
        planned=planned,
        figures={},
    )
    return seen, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500, help="variants announced, in order")
    parser.add_argument("--others", type=int, default=2000, help="runs of other sweeps")
    parser.add_argument("--json", type=Path, help="write the per-event figures here")
    parser.add_argument(
        "--listing",
        action="store_true",
        help="read each event as before announced runs were read: list the tag's runs",
    )
    args = parser.parse_args(argv)

    # SIGTERM ends the benchmark through its finally: the service it started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    scratch = Path(tempfile.mkdtemp(prefix="torchperf-analytics-events-"))
    sys.path.insert(0, str(ROOT))
    from cluster.metadata import start_metadata_service

    service_process, service_url = start_metadata_service(scratch / "metadata")
    counter = Counter()
    proxy, proxy_url = start_proxy(service_url, counter)
    base = {
        "METAFLOW_USER": os.environ.get("METAFLOW_USER", "bench"),
        "METAFLOW_HOME": str(scratch / "mfhome"),  # no user config file
        "METAFLOW_DEFAULT_DATASTORE": "local",
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(scratch / "datastore"),
        "METAFLOW_DEFAULT_METADATA": "service",
    }
    # This process reads Metaflow's settings at `import metaflow`: through the proxy.
    os.environ.update(base, METAFLOW_SERVICE_URL=proxy_url)
    try:
        started = time.perf_counter()
        plain = {k: v for k, v in os.environ.items() if not k.startswith("METAFLOW_")}
        template_run = stand_in(
            scratch, plain | base | {"METAFLOW_SERVICE_URL": service_url}, args.events
        )
        service = Service(service_url)
        template = Template(service, template_run)
        tag = "sweep_bench_events"
        ts = int(time.time() * 1000)
        for i in range(args.others):
            service.run(f"other{i:06d}", [f"sweep_other_{i // 45:05d}"], template.system_tags, ts)
            ts += 1
        print(
            f"setup: stand-in run and {args.others} runs of other sweeps in "
            f"{time.perf_counter() - started:.0f} s"
        )

        from torchperf import analytics

        previous = analytics.Previous()
        figures = []
        for i in range(args.events):
            run_id = f"bench{i:06d}"
            ts += 1
            service.run(run_id, [tag], template.system_tags, ts)
            service.task(run_id, "start", "1", ts)
            service.artifacts(run_id, "start", "1", template.of(template.start, i, True))
            service.task(run_id, "end", "2", ts)
            service.artifacts(run_id, "end", "2", template.of(template.end, i, False))
            requests, received = counter.snapshot()
            cpu, served = time.thread_time(), service_cpu(service_process.pid)
            announced = [] if args.listing else [f"{FLOW}/{run_id}"]
            seen, results = aggregate(tag, previous, announced, args.events)
            cpu, served = time.thread_time() - cpu, service_cpu(service_process.pid) - served
            after = counter.snapshot()
            if len(results) != i + 1:
                raise RuntimeError(f"event {i + 1}: the card shows {len(results)} variants")
            figures.append(
                {
                    "event": i + 1,
                    "requests": after[0] - requests,
                    "bytes": after[1] - received,
                    "cpu_seconds": cpu,
                    "service_cpu_seconds": served,
                }
            )
            previous = analytics.Previous(seen.rows, seen.ended)
            # The variant's end step finishes: Metaflow marks the run successful.
            service.artifacts(run_id, "end", "2", template.of(template.end, i, True))

        # The sweep's final aggregation, as the flow does it: the previous aggregate, then a
        # listing of the tag (nothing announced).
        requests, received = counter.snapshot()
        cpu, served = time.thread_time(), service_cpu(service_process.pid)
        final, results = aggregate(tag, previous, [], args.events)
        cpu, served = time.thread_time() - cpu, service_cpu(service_process.pid) - served
        after = counter.snapshot()
        # Checked against the made-up figures, and against a listing read from nothing (as if
        # every event had been lost).
        rebuilt, _ = aggregate(tag, analytics.Previous(), [], args.events)
        expected = {f"{FLOW}/bench{i:06d}": variant(i)[1]["gflops"] for i in range(args.events)}
        right = all(
            {row["run"]: row["gflops"] for row in seen.rows.values()} == expected
            and not seen.running
            and not seen.ended
            for seen in (final, rebuilt)
        )
        summary = {
            "listing": args.listing,
            "events": args.events,
            "others": args.others,
            "per_event": figures,
            "final": {
                "requests": after[0] - requests,
                "bytes": after[1] - received,
                "cpu_seconds": cpu,
                "service_cpu_seconds": served,
                "listed": final.listed,
                "variants": len(results),
                "right": right,
            },
        }
    finally:
        proxy.shutdown()
        service_process.terminate()
        service_process.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)

    how = "the tag listed" if args.listing else "announced runs read"
    print(f"{args.events} events of one sweep ({how}), {args.others} runs of other sweeps:")
    print("   event  requests      bytes  CPU-s here  CPU-s service")
    shown_events = sorted({1, min(100, args.events), args.events})
    for entry in (figures[n - 1] for n in shown_events):
        print(
            f"  {entry['event']:>6} {entry['requests']:>9} {entry['bytes']:>10} "
            f"{entry['cpu_seconds']:>11.4f} {entry['service_cpu_seconds']:>14.3f}"
        )
    for key in ("requests", "bytes", "cpu_seconds", "service_cpu_seconds"):
        values = [entry[key] for entry in figures]
        print(f"  {key}: median {statistics.median(values):g}, max {max(values):g}")
    final_figures = summary["final"]
    print(
        f"final aggregation (lists the tag): {final_figures['requests']} requests, "
        f"{final_figures['bytes']} bytes,\n  {final_figures['cpu_seconds']:.3f} CPU-s here, "
        f"{final_figures['service_cpu_seconds']:.3f} CPU-s service; "
        f"{final_figures['variants']} variants, "
        + ("every figure right" if right else "WRONG: the final card misses or misreads runs")
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0 if right else 1


if __name__ == "__main__":
    sys.exit(main())
