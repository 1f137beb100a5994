"""Why an order was rejected or canceled: one code table for the paper exchange, the risk checks, the
strategy's counters and the reports (FILL.reason carries the code)."""

from __future__ import annotations

NONE = 0
# -- the paper exchange refused or cut the order ---------------------------------------------------
POST_ONLY_WOULD_CROSS = 1
UNKNOWN_ORDER = 2  #: cancel / replace of an order that is no longer resting (filled or canceled first)
NO_LIQUIDITY = 3  #: a market order's remainder beyond the visible depth, canceled
NO_MARKET_DATA = 4  #: the symbol's book was invalid or empty when the order arrived
EXCHANGE_FULL = 5  #: the exchange's order table or message queue is full
# -- the strategy's risk checks refused it before it was sent ------------------------------------
MAX_POSITION = 10
MAX_ORDER_SIZE = 11
MAX_NOTIONAL = 12
RATE_LIMIT = 13
MAX_LOSS_HALTED = 14
STALE_BOOK = 15
KILL_SWITCH = 16
BAD_ORDER = 17  #: qty <= 0, a limit price <= 0, an unknown side or type
TOO_MANY_OPEN = 18  #: the strategy's open-order table is full
# -- why a resting order was canceled ---------------------------------------------------------------
USER_CANCEL = 20
KILL_SWITCH_CANCEL = 21
MAX_LOSS_CANCEL = 22

#: code -> snake_case name, for counters, CSVs and reports
NAMES: dict[int, str] = {v: k.lower() for k, v in dict(globals()).items() if k.isupper() and isinstance(v, int)}
#: number of counter slots indexed by code
N_REASONS = 32


def name(code: int) -> str:
    return NAMES.get(int(code), f"reason_{int(code)}")
