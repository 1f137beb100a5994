#!/usr/bin/env python
"""Convert a JSON-lines capture into a binary capture that run.py replays with no parsing.

    python scripts/convert_capture.py capture.lines.gz capture.tpc
    python run.py --replay capture.tpc --speed 0

The input is `<receive_ts_ns> <json>` lines (gzip or plain). Each message goes through the project's
parser (the same records a JSON replay gives); the output holds those MARKET records after a header that
names their layout (name, hash, dtype: a reader with another layout refuses the file), the symbol table,
the source file's name and sha256, and the parser's counters. Messages that give no records (unknown
types, malformed JSON) are counted in the header and in the summary, never silently lost. The output is
not compressed, so that the replay can memory-map it. Format: procs/sources/binary.py.

Exit status: 0 on success; 2 on a usage error (missing input, output exists without --force, an input
that is already binary).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from procs.sources.binary import CaptureFormatError, convert_capture, summarize


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="convert_capture.py", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", metavar="IN", help="capture to convert: <ts_ns> <json> lines, gzip or plain")
    ap.add_argument("output", metavar="OUT", help="binary capture to write (e.g. capture.tpc)")
    ap.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr, only the summary")
    args = ap.parse_args(argv)
    if Path(args.output).exists() and not args.force:
        print(f"convert_capture.py: {args.output} exists (pass --force to overwrite)", file=sys.stderr)
        return 2
    t0 = time.monotonic()

    def progress(p: dict[str, int]) -> None:
        pct = 100 * p["bytes_read"] / max(p["bytes"], 1)
        print(f"convert_capture.py: {pct:5.1f}% of {args.input} read: {p['lines']:,} lines, "
              f"{p['records']:,} records, {p['symbols']} symbols, {time.monotonic() - t0:.0f} s",
              file=sys.stderr, flush=True)

    try:
        header = convert_capture(args.input, args.output, force=args.force, progress=None if args.quiet else progress)
    except (FileNotFoundError, FileExistsError, CaptureFormatError, ValueError) as exc:
        print(f"convert_capture.py: {exc}", file=sys.stderr)
        return 2
    wall = time.monotonic() - t0
    print(f"{args.output}: {summarize(header)}; converted in {wall:.1f} s "
          f"({header['source']['lines'] / max(wall, 1e-9):,.0f} lines/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
