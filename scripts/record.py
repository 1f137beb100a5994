#!/usr/bin/env python
"""Record Binance market data in the capture format that replay reads: `<receive_ts_ns> <json>` lines, gzip.

    python scripts/record.py --symbols BTCUSDT,ETHUSDT --out captures/            # spot, until Ctrl-C
    python scripts/record.py --market usdm --symbols BTCUSDT --duration 3600 --rotate-minutes 10
    python scripts/record.py --symbols BTCUSDT --ws-url ws://127.0.0.1:9443 --rest-url http://127.0.0.1:9443

Every WebSocket message is written unchanged, in arrival order, stamped with the epoch ns at which its
bytes came off the socket. REST depth snapshots are written as `{"stream":"<symbol>@depthSnapshot",
"data":{...}}` lines (the capture format's multi-symbol convention): one per symbol at the start of every
file, and a new one whenever the book's update-id chain breaks (a gap, a reconnect), fetched by the same
rules as the live feed, so any file replays on its own and rebuilds the book (`python run.py --replay FILE`
or `python scripts/verify_book.py FILE`). Files rotate by age or size; the gzip stream is flushed every few
seconds, so a killed recorder loses at most those seconds (replay reads a truncated gzip up to its end).
"""

from __future__ import annotations

import argparse
import gzip
import logging
import signal
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from procs.kernels.parse_json import ERR_NO_SPACE, Parser, SymbolTable  # noqa: E402
from procs.sources.live import LiveIngest, LiveOptions  # noqa: E402
from shm.records import MARKET  # noqa: E402

#: Seconds between gzip flushes (what a kill -9 can lose).
FLUSH_S = 2.0


class Recorder:
    """Writes what a LiveIngest receives into rotating gzip capture files."""

    def __init__(self, opts: LiveOptions, out_dir: Path, *, prefix: str = "", rotate_s: float = 3600.0,
                 rotate_bytes: int = 1 << 30, log: logging.Logger | None = None) -> None:
        self.opts = opts
        self.out_dir = out_dir
        self.prefix = prefix or f"{opts.market}_{'_'.join(s.lower() for s in opts.symbols[:4])}"
        self.rotate_s = rotate_s
        self.rotate_bytes = rotate_bytes
        self.log = log or logging.getLogger("record")
        self.ingest = LiveIngest(opts, log=self.log, stamp_ns=time.time_ns)
        self.parser = Parser(SymbolTable(opts.symbols, auto_add=False))
        self.stage = np.zeros(16384, MARKET.dtype)
        self.files: list[Path] = []
        self.messages = 0
        self.snapshots = 0
        self._f: gzip.GzipFile | None = None
        self._raw_bytes = 0
        self._opened = 0.0
        self._flushed = 0.0

    def _open(self) -> None:
        self._close_file()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime())
        path = self.out_dir / f"{self.prefix}_{stamp}.lines.gz"
        k = 1
        while path.exists():  # never overwrite: a second file in the same second gets a suffix
            path = self.out_dir / f"{self.prefix}_{stamp}_{k}.lines.gz"
            k += 1
        self._f = gzip.open(path, "xb", compresslevel=6)  # noqa: SIM115 - lives until the next rotation
        self.files.append(path)
        self._raw_bytes = 0
        self._opened = self._flushed = time.monotonic()
        self.log.info("record: writing %s", path)
        # each file replays on its own: it starts with a fresh snapshot of every symbol
        for s in range(len(self.opts.symbols)):
            self.ingest.src.request_snapshot(s)

    def _close_file(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def step(self, buf: list[tuple[int, bytes]]) -> int:
        """Receive, write and mirror whatever is ready; the number of messages written."""
        if self._f is None:
            self._open()
        buf.clear()
        n = self.ingest.poll(buf)
        if n:
            f = self._f
            assert f is not None
            data = b"".join(b"%d %b\n" % (ts, raw) for ts, raw in buf)
            f.write(data)
            self._raw_bytes += len(data)
            self.messages += n
            self.snapshots += sum(1 for _, raw in buf if b"@depthSnapshot" in raw[:64])
            k = 0
            for _, raw in buf:  # parsed only to mirror the book's sync state: gaps ask for a new snapshot
                r = self.parser.parse(raw, 0, self.stage, k)
                if r == ERR_NO_SPACE:
                    self.ingest.after_parse(self.stage, 0, k)
                    k = 0
                    r = self.parser.parse(raw, 0, self.stage, 0)
                k += max(r, 0)
            self.ingest.after_parse(self.stage, 0, k)
        else:
            self.ingest.after_parse(self.stage, 0, 0)
        now = time.monotonic()
        if now - self._flushed >= FLUSH_S and self._f is not None:
            self._f.flush()
            self._flushed = now
        if now - self._opened >= self.rotate_s or self._raw_bytes >= self.rotate_bytes:
            self._open()
        return n

    def run(self, duration_s: float = 0.0, status_s: float = 10.0, stop: list[bool] | None = None) -> None:
        stop = stop if stop is not None else [False]
        t0 = time.monotonic()
        next_status = t0 + status_s
        buf: list[tuple[int, bytes]] = []
        try:
            while not stop[0] and (duration_s <= 0 or time.monotonic() - t0 < duration_s):
                if self.step(buf) == 0:
                    self.ingest.wait(0.05)
                if status_s > 0 and time.monotonic() >= next_status:
                    next_status += status_s
                    self.log.info("record: %s", self.status())
        finally:
            self.close()

    def status(self) -> str:
        c = self.ingest.counters
        name = self.files[-1].name if self.files else "-"
        return (f"{self.messages} messages, {self.snapshots} snapshots, file {name} "
                f"({self._raw_bytes / 1e6:.1f} MB raw), reconnects {c['reconnects']}, gaps {c['gaps']}, "
                f"resyncs {c['resyncs']}, bad frames {c['bad_frames']}, stale {c['stale_ms'] / 1000:.1f} s")

    def close(self) -> None:
        self._close_file()
        self.ingest.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/record.py", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--market", choices=("spot", "usdm"), default="spot", help="Binance market (default spot)")
    ap.add_argument("--symbols", default="BTCUSDT", help="comma-separated symbols (default BTCUSDT)")
    ap.add_argument("--streams", default="",
                    help="comma-separated streams per symbol (default: depth@100ms,bookTicker,trade on spot, "
                         "aggTrade instead of trade on usdm)")
    ap.add_argument("--out", default="captures", help="folder for the files (default captures/)")
    ap.add_argument("--prefix", default="", help="file name prefix (default <market>_<symbols>)")
    ap.add_argument("--ws-url", default="", help="WebSocket base URL (default Binance's for the market)")
    ap.add_argument("--rest-url", default="", help="REST base URL for snapshots (default Binance's for the market)")
    ap.add_argument("--snapshot-limit", type=int, default=1000, help="snapshot levels per side (default 1000)")
    ap.add_argument("--ca-file", default="", help="extra CA bundle (PEM) to trust")
    ap.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (default: until Ctrl-C)")
    ap.add_argument("--rotate-minutes", type=float, default=60.0, help="start a new file this often (default 60)")
    ap.add_argument("--rotate-mb", type=float, default=1024.0,
                    help="...or after this many MB of uncompressed lines (default 1024)")
    ap.add_argument("--status-s", type=float, default=10.0, help="a status line this often on stderr (0: none)")
    ap.add_argument("--quiet", action="store_true", help="errors only")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if a.quiet else logging.INFO, format="%(asctime)s %(message)s",
                        stream=sys.stderr)
    try:
        opts = LiveOptions(market=a.market, symbols=[s.strip().upper() for s in a.symbols.split(",") if s.strip()],
                           streams=[s.strip() for s in a.streams.split(",") if s.strip()], ws_url=a.ws_url,
                           rest_url=a.rest_url, snapshot_limit=a.snapshot_limit, ca_file=a.ca_file)
    except ValueError as exc:
        ap.error(str(exc))
    if a.rotate_minutes <= 0 or a.rotate_mb <= 0:
        ap.error(f"--rotate-minutes and --rotate-mb must be > 0: found {a.rotate_minutes}, {a.rotate_mb}")
    rec = Recorder(opts, Path(a.out), prefix=a.prefix, rotate_s=a.rotate_minutes * 60,
                   rotate_bytes=int(a.rotate_mb * 1e6))
    stop = [False]

    def on_signal(signum: int, _frame: object) -> None:
        stop[0] = True  # finish the gzip stream properly, then exit

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    rec.run(a.duration, a.status_s, stop)
    print(f"record: {rec.status()}", file=sys.stderr)
    for p in rec.files:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
