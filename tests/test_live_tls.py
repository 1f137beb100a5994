"""TLS on the live feed: certificates and host names are verified. A server with a self-signed certificate
is refused (counted as a connect failure, retried), and accepted once its certificate is trusted through
`live.ca_file`. Needs the `openssl` command to make the certificate; skipped with the reason otherwise."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.server import serve

from procs.sources.live import LiveOptions, LiveSource, ssl_context

FRAME = '{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"1.0","q":"1.0","T":1,"m":true}}'


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed (needed to make a test certificate)")
    d = tmp_path_factory.mktemp("tls")
    crt, key = d / "localhost.crt", d / "localhost.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return crt, key


@pytest.fixture
def tls_server(cert: tuple[Path, Path]) -> Iterator[int]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    port: list[int] = []
    stop = threading.Event()

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        while not stop.is_set():
            await ws.send(FRAME)
            await asyncio.sleep(0.02)

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0, ssl=ctx) as srv:
            port.append(srv.sockets[0].getsockname()[1])
            while not stop.is_set():
                await asyncio.sleep(0.02)

    t = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not port and time.monotonic() < deadline:
        time.sleep(0.01)
    assert port, "TLS test server did not start"
    yield port[0]
    stop.set()
    t.join(5)


def _run(src: LiveSource, seconds: float) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end and not out:
        src.poll(out)
        src.wait(0.01)
    return out


def test_default_context_verifies_certificates_and_host_names() -> None:
    ctx = ssl_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_an_untrusted_certificate_is_refused(tls_server: int) -> None:
    opts = LiveOptions(symbols=["BTCUSDT"], ws_url=f"wss://localhost:{tls_server}", rest_url="https://localhost:1",
                       backoff_initial_s=0.02, backoff_max_s=0.05, connect_timeout_s=2.0)
    src = LiveSource(opts)
    try:
        assert _run(src, 1.0) == []
        assert src.counters["connect_failures"] >= 1 and src.counters["connects"] == 0
    finally:
        src.close()


def test_a_trusted_certificate_connects(tls_server: int, cert: tuple[Path, Path]) -> None:
    opts = LiveOptions(symbols=["BTCUSDT"], ws_url=f"wss://localhost:{tls_server}", rest_url="https://localhost:1",
                       ca_file=str(cert[0]), connect_timeout_s=5.0)
    src = LiveSource(opts)
    try:
        got = _run(src, 10.0)
        assert got and got[0][1] == FRAME.encode()
        assert src.counters["connects"] == 1 and src.counters["connect_failures"] == 0
    finally:
        src.close()
