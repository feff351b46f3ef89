"""/v2 infer: a 256-row batch as binary tensors vs JSON, on the same `xylen serve`, in the same run, interleaved.

    python bench/bench_v2.py                            # 3 rounds x 5 s per body, concurrency 1 and 8
    python bench/bench_v2.py --rows 256 --seconds 5 --rounds 3 --concurrency 1 8
    python bench/bench_v2.py --against /path/to/other/checkout   # + the JSON bodies and /predict on its server

Model: the 500-tree x 31-leaf LightGBM bundle of bench_v2_mlserver.py (built on first use under bench/out/). Body:
the feature rows of the sample's last ``--rows`` candles, FP32, sent (a) as tritonclient sends them by default
(JSON header + raw little-endian bytes, outputs asked as binary) and (b) as JSON (``data`` a flat list, JSON
outputs). Both bodies are built once; an asyncio keep-alive client POSTs the prebuilt bytes and reads each answer
whole. The two bodies alternate within each round (order swapped every round); medians over rounds of requests/s
and p50, and the ratios, are printed. The answers of both are checked equal bit for bit first, and the server's
own cost per request for each body (in this process, without HTTP) is printed next to the model's predict alone.

With ``--against``, a second server runs the other checkout (PYTHONPATH=<checkout>/src) on the same model, and the
JSON bodies (1 row and ``--rows`` rows) and POST /predict (100 candles) alternate across both servers: the figures
that show whether this checkout kept the JSON path and /predict as fast.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.builders / tests.conftest
sys.path.insert(0, str(HERE))

from bench_v2_mlserver import NAME, WORK, Server, build_model, free_port  # noqa: E402


def feature_rows(n: int) -> np.ndarray:
    from tests.builders import sample_arrays, window_matrix

    from xylen.core import features

    c = sample_arrays()
    ends = range(len(c) - n, len(c))
    return np.vstack(
        [features.last_row(features.CandleArrays.from_matrix(window_matrix(c, e, features.MIN_CANDLES))) for e in ends]
    ).astype(np.float32)


def request(port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"\r\n" + body


def bodies(X: np.ndarray) -> dict[str, tuple[bytes, dict[str, str]]]:
    shape = list(X.shape)
    raw = X.astype("<f4").tobytes()
    head = orjson.dumps({"inputs": [{"name": "features", "shape": shape, "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "probability", "parameters": {"binary_data": True}}]})
    binary = (head + raw, {"Content-Type": "application/octet-stream",
                           "Inference-Header-Content-Length": str(len(head))})
    js = (orjson.dumps({"inputs": [{"name": "features", "shape": shape, "datatype": "FP32",
                                    "data": X.ravel().tolist()}]}), {"Content-Type": "application/json"})
    return {"binary": binary, "json": js}


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> tuple[int, bytes, bytes]:
    writer.write(req)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    n = 0
    for line in head.split(b"\r\n")[1:]:
        if line.lower().startswith(b"content-length:"):
            n = int(line.split(b":", 1)[1])
    return int(head[9:12]), head, await reader.readexactly(n)


async def drive(port: int, req: bytes, seconds: float, concurrency: int) -> tuple[float, float, int]:
    """(requests/s, p50 seconds, errors) for ``req`` at ``concurrency`` keep-alive connections."""
    lat: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                status, _, _ = await _one(reader, writer, req)
                lat.append(time.perf_counter() - t)
                errors += status != 200
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(lat) / (time.perf_counter() - t0), statistics.median(lat), errors


def answer_bytes(port: int, req: bytes) -> bytes:
    """The probability output of one answer as float64 bytes, binary or JSON."""

    async def go() -> tuple[int, bytes, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await _one(reader, writer, req)
        finally:
            writer.close()

    status, head, body = asyncio.run(go())
    assert status == 200, body[:300]
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"inference-header-content-length:"):
            n = int(line.split(b":", 1)[1])
            return body[n:]
    return np.array(orjson.loads(body)["outputs"][0]["data"], dtype="<f8").tobytes()


def in_process(home: Path, b: dict[str, tuple[bytes, dict[str, str]]], X: np.ndarray, reps: int) -> None:
    """The server's own cost per request (infer_answer: decode, checks, predict, encode), both bodies alternating,
    next to the model's batch predict alone: what the client and HTTP add is not in these figures."""
    from xylen.core.settings import load_settings
    from xylen.serve.app import create_app
    from xylen.serve.v2 import infer_answer

    st = create_app(load_settings({"home": home}, environ={})).state
    st.holder.load_all()  # in this process, after the usual verification in a child
    bundle = st.holder.live[NAME].bundle
    X64 = X.astype(np.float64)
    times: dict[str, list[float]] = {"binary": [], "json": [], "predict": []}
    for _ in range(reps):
        for kind, (body, headers) in b.items():
            length = headers.get("Inference-Header-Content-Length")
            t = time.perf_counter()
            infer_answer(st, NAME, None, body, None if length is None else length.encode())
            times[kind].append(time.perf_counter() - t)
        t = time.perf_counter()
        bundle.predict(X64)
        times["predict"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    print(f"  in process, median of {reps}: binary {med['binary']:,.0f} us, JSON {med['json']:,.0f} us "
          f"(x{med['json'] / med['binary']:.2f}); the model's predict alone {med['predict']:,.0f} us, so decoding and "
          f"encoding cost binary {med['binary'] - med['predict']:,.0f} us, JSON {med['json'] - med['predict']:,.0f} us")


def start(label: str, home: Path, src: Path | None) -> Server:
    port = free_port()
    env = {**os.environ, "XYLEN_HOME": str(home), "OMP_NUM_THREADS": "1"}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    server = Server(label, [sys.executable, "-m", "xylen", "serve", "--port", str(port)], env, port, "/health/ready",
                    HERE.parent)
    server.wait_ready()
    return server


def alternate(cases: dict[str, tuple[int, bytes]], rounds: int, seconds: float, conc: int) -> dict[str, list[Any]]:
    got: dict[str, list[Any]] = {k: [] for k in cases}
    names = list(cases)
    for r in range(rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            port, req = cases[k]
            got[k].append(asyncio.run(drive(port, req, seconds, conc)))
    return got


def report(got: dict[str, list[Any]], pairs: list[tuple[str, str]], conc: int) -> None:
    med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v), sum(x[2] for x in v))
           for k, v in got.items()}
    for k, (rps, p50, err) in med.items():
        print(f"  c={conc:<3} {k:<34} {rps:9,.0f} req/s   p50 {p50 * 1e3:7.3f} ms   errors {err}")
    for a, b in pairs:
        print(f"  c={conc:<3} {a} / {b}: x{med[a][0] / med[b][0]:.2f} req/s, p50 x{med[a][1] / med[b][1]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=5.0, help="per body per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--against", type=Path, help="another checkout: its server is the JSON and /predict baseline")
    ap.add_argument("--reps", type=int, default=300, help="in-process calls per body")
    ap.add_argument("--rebuild", action="store_true")
    args = ap.parse_args()

    WORK.mkdir(parents=True, exist_ok=True)
    home, _ = build_model(args.rebuild)
    X = feature_rows(args.rows)
    one = feature_rows(1)
    servers = {"this": start("bench-v2-this", home, None)}
    if args.against:
        servers["against"] = start("bench-v2-against", home, args.against.resolve() / "src")
    try:
        from tests.builders import sample_arrays, window_matrix
        from tests.conftest import binance_rows

        c = sample_arrays()
        # no symbol: the only model served answers (bench-v2 is not named after its series)
        candles = orjson.dumps({"candles": binance_rows(window_matrix(c, len(c) - 1, 100))})
        path = f"/v2/models/{NAME}/infer"
        port = servers["this"].port
        b = bodies(X)
        reqs = {k: request(port, path, body, h) for k, (body, h) in b.items()}
        same = answer_bytes(port, reqs["binary"]) == answer_bytes(port, reqs["json"])
        print(f"{NAME}, {args.rows} rows x {X.shape[1]} FP32 features: binary body {len(b['binary'][0]):,} B, "
              f"JSON body {len(b['json'][0]):,} B; answers equal bit for bit: {same}")
        assert same
        in_process(home, b, X, args.reps)
        for conc in args.concurrency:
            got = alternate({f"binary {args.rows} rows": (port, reqs["binary"]),
                             f"JSON {args.rows} rows": (port, reqs["json"])}, args.rounds, args.seconds, conc)
            report(got, [(f"binary {args.rows} rows", f"JSON {args.rows} rows")], conc)
        if args.against:
            cases: dict[str, tuple[int, bytes]] = {}
            for label, s in servers.items():
                for what, body in ((f"v2 JSON {args.rows} rows", b["json"][0]),
                                   ("v2 JSON 1 row", bodies(one)["json"][0])):
                    req = request(s.port, path, body, {"Content-Type": "application/json"})
                    cases[f"{label}: {what}"] = (s.port, req)
                cases[f"{label}: /predict 100 candles"] = (
                    s.port, request(s.port, "/predict", candles, {"Content-Type": "application/json"}))
            whats = [f"v2 JSON {args.rows} rows", "v2 JSON 1 row", "/predict 100 candles"]
            for conc in args.concurrency:
                got = alternate(cases, args.rounds, args.seconds, conc)
                report(got, [(f"this: {w}", f"against: {w}") for w in whats], conc)
    finally:
        for s in servers.values():
            s.stop()


if __name__ == "__main__":
    main()
