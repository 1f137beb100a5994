"""Every record that crosses a ring, declared once.

Each record starts with the common header (seq, t_origin_ns, t_publish_ns, symbol,
kind, flags). Prices and quantities are fixed-point int64 scaled by `PRICE_SCALE` and
`QTY_SCALE`: Binance's decimal strings parse straight to integers with no float.
The numpy dtypes, C declarations and layout hashes all derive from the `Layout`s below.
"""

from __future__ import annotations

from shm.layout import Field, Layout

#: Fixed-point scale of every price: 1e8 covers Binance's 8 decimals exactly.
PRICE_SCALE = 100_000_000
#: Fixed-point scale of every quantity.
QTY_SCALE = 100_000_000

HEADER: tuple[Field, ...] = (
    Field("seq", "u8", doc="ring position + 1, stamped by the ring at publish (the commit a consumer polls)"),
    Field("t_origin_ns", "i8",
          doc="CLOCK_MONOTONIC ns when the source received (or was scheduled to emit) the message"),
    Field("t_publish_ns", "i8", doc="CLOCK_MONOTONIC ns when the last stage published this record"),
    Field("symbol", "u4", doc="symbol id: index into the run's symbol table"),
    Field("kind", "u2", doc="record kind, one of the KIND_* constants"),
    Field("flags", "u2", doc="bit set of FLAG_* constants"),
)


def record(name: str, *fields: Field, size: int | None = None) -> Layout:
    """A layout made of the common header followed by `fields`."""
    return Layout(name, HEADER + fields, size=size)


# -- kinds ------------------------------------------------------------------------------------
#: Benchmark / test payload.
KIND_BENCH = 1
#: One price level change from a depthUpdate diff (qty 0 deletes the level).
KIND_DEPTH = 10
#: One price level of a REST depth snapshot.
KIND_SNAPSHOT = 11
#: A trade or aggTrade.
KIND_TRADE = 12
#: A bookTicker (best bid in price/qty, best ask in price2/qty2).
KIND_TICKER = 13
#: A depthUpdate that changed no level (still advances the update-id chain).
KIND_DEPTH_EMPTY = 14
#: The source lost its stream (a live disconnect): the symbol's book is invalid until its next snapshot.
KIND_RESET = 15
#: Top of book after an update.
KIND_BOOK = 20
#: Feature vector after an update.
KIND_FEATURES = 21
#: Model output.
KIND_SCORE = 30
#: Order instruction.
KIND_ORDER = 40
#: Execution report.
KIND_FILL = 41

# -- flags ------------------------------------------------------------------------------------
#: Last record produced from one raw message (a diff with 40 levels gives 40 records, the last flagged).
FLAG_LAST_IN_MESSAGE = 1 << 0
#: The book was valid (synced, uncrossed) when this record was produced.
FLAG_BOOK_VALID = 1 << 1
#: Side: set for ask / sell, clear for bid / buy.
FLAG_ASK = 1 << 2
#: Trade: the buyer was the maker (the aggressor sold).
FLAG_BUYER_MAKER = 1 << 3
#: Snapshot begin / end markers on KIND_SNAPSHOT records.
FLAG_SNAPSHOT_BEGIN = 1 << 4
FLAG_SNAPSHOT_END = 1 << 5
#: Score: the anomaly model's column 0 is above its threshold (an anomaly is flagged).
FLAG_ANOMALY = 1 << 6
#: Order: post-only (a limit order that would take liquidity is rejected instead).
FLAG_POST_ONLY = 1 << 8
#: Book / features: the symbol has at least 10 s of exchange-time history, so the windowed features
#: (returns, volatility, flows over up to 10 s) are filled; the models score only such rows.
FLAG_FEATURES_WARM = 1 << 7

# -- markets ----------------------------------------------------------------------------------
#: Spot: first diff obeys U <= lastUpdateId+1 <= u.
MARKET_SPOT = 0
#: USD-M futures: `pu` chains each diff to the previous `u`.
MARKET_USDM = 1
#: COIN-M futures: same rules as USD-M.
MARKET_COINM = 2

BENCH = record(
    "Bench",
    Field("value", "u8", doc="payload value, derived from seq so a reader can check it"),
    Field("check", "u8", doc="checksum of seq and value"),
)

MARKET = record(
    "Market",
    Field("price", "i8", doc="level / trade / best bid price, fixed point"),
    Field("qty", "i8", doc="level / trade / best bid quantity, fixed point"),
    Field("price2", "i8", doc="best ask price (ticker only)"),
    Field("qty2", "i8", doc="best ask quantity (ticker only)"),
    Field("first_id", "i8", doc="U: first update id of the diff (trade id for trades)"),
    Field("last_id", "i8", doc="u: last update id of the diff / snapshot lastUpdateId / ticker u"),
    Field("prev_id", "i8", doc="pu: previous diff's u (futures), -1 on spot"),
    Field("exch_ts_ms", "i8", doc="exchange event time, ms since the epoch"),
    Field("market", "u1", doc="MARKET_* constant"),
)

N_FEATURES = 16

#: Price levels per side a BOOK record carries (the paper exchange's queue model and market orders use them).
BOOK_DEPTH = 10

BOOK = record(
    "Book",
    Field("bid_px", "i8"),
    Field("bid_qty", "i8"),
    Field("ask_px", "i8"),
    Field("ask_qty", "i8"),
    Field("last_id", "i8", doc="update id of the last diff applied"),
    Field("exch_ts_ms", "i8"),
    Field("trade_px", "i8", doc="last trade price (0 before the first trade)"),
    Field("trade_qty", "i8", doc="quantity of the update's trade, signed by aggressor side (> 0 buyer "
                                 "aggressed, < 0 seller, 0 no trade in this update)"),
    Field("bid_pxs", "i8", BOOK_DEPTH, doc="best BOOK_DEPTH bid prices, best first (0: no level)"),
    Field("bid_qtys", "i8", BOOK_DEPTH),
    Field("ask_pxs", "i8", BOOK_DEPTH, doc="best BOOK_DEPTH ask prices, best first (0: no level)"),
    Field("ask_qtys", "i8", BOOK_DEPTH),
)

FEATURES = record(
    "Features",
    Field("last_id", "i8", doc="update id of the book state the features describe"),
    Field("exch_ts_ms", "i8", doc="exchange time of that book state (the anomaly score's history runs on it)"),
    Field("values", "f8", N_FEATURES, doc="feature vector, order given by shm.features.FEATURE_NAMES"),
)

# -- SCORE.values: one record per symbol carries both models' outputs (procs/inference.py) -------
#: Anomaly level in [0, 1]: P(anomaly) for a probability model, min(score / threshold, 1) for an
#: error score (e.g. a VAE's reconstruction error). The strategy widens its spread by it.
SCORE_ANOMALY = 0
#: The anomaly model's column 0 as it came out: FLAG_ANOMALY is set when it is above the threshold.
SCORE_ANOMALY_RAW = 1
#: P(mid goes up next) from the direction model's column 0; NaN when no direction model is loaded.
SCORE_UP = 2
#: The direction model's column 1 (e.g. P(down)); NaN when it has none.
SCORE_DIRECTION_1 = 3
#: First of the slots holding the anomaly model's columns 1, 2, ... (e.g. P(kind)); NaN when absent.
SCORE_ANOMALY_EXTRA = 4
#: Number of values slots (fixed by the layout).
SCORE_N_VALUES = 8

SCORE = record(
    "Score",
    Field("feature_seq", "u8", doc="seq of the feature record that was scored"),
    Field("exch_ts_ms", "i8", doc="exchange time of the scored book state (a strategy can see how old it is)"),
    Field("model_id", "u4", doc="crc32 of the anomaly graph's bytes, continued over the direction graph's "
                                "(equal to the anomaly Model.model_id when there is no direction model)"),
    Field("n_outputs", "u4", doc="values slots filled: always SCORE_N_VALUES (a slot without a value is NaN)"),
    Field("values", "f8", SCORE_N_VALUES, doc="SCORE_ANOMALY, SCORE_ANOMALY_RAW, SCORE_UP, SCORE_DIRECTION_1, "
                                              "then the anomaly model's columns 1.. from SCORE_ANOMALY_EXTRA"),
)

ORDER = record(
    "Order",
    Field("client_order_id", "u8"),
    Field("price", "i8"),
    Field("qty", "i8"),
    Field("side", "u1", doc="0 buy, 1 sell"),
    Field("order_type", "u1", doc="0 limit, 1 market"),
    Field("action", "u1", doc="0 new, 1 cancel, 2 replace"),
    Field("tag", "u2", doc="strategy sleeve (e.g. 0 naive / 1 ML-hybrid TWAP, A/B in one run)"),
    Field("exch_ts_ms", "i8", doc="decision time on the exchange clock (the BOOK record acted on)"),
    Field("mid_px", "i8", doc="mid price at decision time (slippage reference)"),
)

FILL = record(
    "Fill",
    Field("client_order_id", "u8"),
    Field("price", "i8"),
    Field("qty", "i8", doc="filled quantity of this event"),
    Field("leaves_qty", "i8"),
    Field("fee", "i8", doc="fee of this fill in quote currency, fixed point at PRICE_SCALE (< 0: a rebate)"),
    Field("side", "u1"),
    Field("status", "u1", doc="0 ack, 1 partial, 2 filled, 3 canceled, 4 rejected, 5 replaced"),
    Field("tag", "u2", doc="the order's strategy sleeve"),
    Field("liquidity", "u1", doc="0 maker, 1 taker (fills only)"),
    Field("reason", "u1", doc="procs.kernels.reasons code: why rejected or canceled (0 none)"),
    Field("exch_ts_ms", "i8", doc="event time on the exchange clock"),
    Field("order_ts_ms", "i8", doc="decision time of the order"),
    Field("mid_px", "i8", doc="mid price at the order's decision time"),
)

#: Every record layout, by name.
LAYOUTS: dict[str, Layout] = {lay.name: lay for lay in (BENCH, MARKET, BOOK, FEATURES, SCORE, ORDER, FILL)}


def c_declarations() -> str:
    """C typedefs for every record, in declaration order (used by the cffi build)."""
    return "\n\n".join(lay.c_decl() for lay in LAYOUTS.values())
