#!/usr/bin/env python3
"""Check the L2 book against Binance's own top of book, on your recordings.

Replays each capture (`<ts_ns> <json>` per line, gzip or plain) through tickpipe's real parser and
numba book kernel. After every applied depth diff, the book's best bid/ask (price and quantity)
must equal every bookTicker that carries the same update id u. Prints, per symbol: diffs applied,
bookTicker checks made, mismatches, crossed books (plus gaps, stale and buffered diffs, snapshots).

Exit status: 0 if every check matched and no book crossed; 1 on any mismatch or crossed book;
2 on a usage error (such as a missing file).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from procs.book_check import CaptureCheck, check_capture

COLUMNS = ("symbol", "diffs", "checks", "mismatch", "crossed", "gaps", "resync", "stale", "buffered", "snaps",
           "tickers")


def _table(res: CaptureCheck) -> str:
    rows = [COLUMNS]
    for s in res.symbols:
        rows.append((s.name, s.diffs_applied, s.ticker_checks, s.mismatches, s.crossed, s.gaps,
                     s.resyncs_needed, s.stale, s.buffered, s.snapshots, s.tickers))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(COLUMNS))]
    return "\n".join("  " + "  ".join(str(v).rjust(w) if i else str(v).ljust(w)
                                      for i, (v, w) in enumerate(zip(r, widths, strict=True))) for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="verify_book.py",
        description=__doc__,
        epilog="example: python scripts/verify_book.py ../shared/data/binance/*.lines.gz",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("captures", nargs="+", metavar="CAPTURE",
                    help="capture file(s): '<ts_ns> <json>' lines, gzip or plain (detected by content)")
    ap.add_argument("--symbol", metavar="NAME", default=None,
                    help="symbol of bare REST snapshots (they carry none); default: the only symbol seen "
                         "so far in the file")
    ap.add_argument("--max-symbols", type=int, default=64, metavar="N",
                    help="most symbols per capture (default: %(default)s)")
    ap.add_argument("--fail-on-gap", action="store_true",
                    help="also exit 1 when the update-id chain has a gap (the recording lost messages)")
    ap.add_argument("-q", "--quiet", action="store_true", help="print only failures and the final verdict")
    args = ap.parse_args(argv)

    missing = [c for c in args.captures if not Path(c).is_file()]
    if missing:
        ap.error("capture not found: " + ", ".join(missing))
    if args.max_symbols < 1:
        ap.error(f"--max-symbols must be >= 1: got {args.max_symbols}")

    failed = False
    for path in args.captures:
        t0 = time.perf_counter()
        res = check_capture(path, bare_symbol=args.symbol, max_symbols=args.max_symbols)
        dt = time.perf_counter() - t0
        bad = not res.ok or (args.fail_on_gap and any(s.gaps for s in res.symbols))
        failed |= bad
        if not args.quiet or bad:
            print(f"{path}: {res.lines} lines in {dt:.2f} s, {'FAIL' if bad else 'ok'}")
            print(_table(res))
            p = res.parse
            notes = [f"{k}={p[k]}" for k in ("unknown_type", "unknown_symbol", "bad_json", "bad_field",
                                             "bad_number") if p[k]]
            if res.bad_lines:
                notes.insert(0, f"bad_lines={res.bad_lines}")
            if notes:
                print("  skipped: " + " ".join(notes))
            for s in res.symbols:
                if s.ticker_checks == 0:
                    print(f"  note: {s.name}: no bookTicker matched an applied diff, nothing was checked")
                for ex in s.examples:
                    print(f"  mismatch {s.name}: {ex}")
    print("FAIL" if failed else "OK: every bookTicker check matched, no crossed book")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
