"""Names and meaning of the FEATURES record's `values`, in order (computed by procs/kernels/features.py).

Units: prices in quote currency, quantities in base units (floats), returns / spreads / offsets in
basis points (1e-4 of the mid). Time is the exchange event time `E` in ms, clamped to never go back
per symbol. "EW τ" is an exponentially weighted sum with time constant τ: Σ x_i·exp(-(t - t_i)/τ), a
rolling window without a ring of past events. Book features are 0 while the book is not valid.
"""

from __future__ import annotations

import hashlib

from shm.records import N_FEATURES

#: Feature names, index = position in FEATURES.values.
FEATURE_NAMES: tuple[str, ...] = (
    "mid",                  # (best bid + best ask) / 2, quote currency
    "spread_bps",           # (ask - bid) / mid, bps
    "microprice_bps",       # (microprice - mid) / mid, bps; microprice = (bid·aq + ask·bq) / (bq + aq)
    "imbalance_1",          # (bid_qty - ask_qty) / (bid_qty + ask_qty) at the top level, in [-1, 1]
    "imbalance_5",          # same over the best 5 levels of each side
    "imbalance_20",         # same over the best 20 levels of each side
    "ofi",                  # order-flow imbalance of this update (Cont, Kukanov, Stoikov 2014 e_n), base qty
    "ofi_1s",               # EW τ=1 s sum of ofi, base qty
    "ret_100ms_bps",        # log mid return over the last 100 ms, bps (0 until there is history)
    "ret_1s_bps",           # same over 1 s
    "ret_10s_bps",          # same over 10 s
    "vol_10s_bps",          # sqrt(EW τ=10 s sum of squared per-update log mid returns), bps
    "trade_flow_1s",        # EW τ=1 s sum of signed trade qty (+ buyer-initiated), base qty
    "trade_imbalance_10s",  # EW τ=10 s signed trade qty / EW τ=10 s trade qty, in [-1, 1]
    "vwap_offset_10s_bps",  # (EW τ=10 s VWAP - mid) / mid, bps (0 without trades)
    "trade_rate_10s",       # EW τ=10 s trade count / 10 s: trades per second
)

assert len(FEATURE_NAMES) == N_FEATURES, f"names={len(FEATURE_NAMES)} N_FEATURES={N_FEATURES}"

#: Index of each feature by name.
FEATURE_INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURE_NAMES)}


def feature_layout_hash(names: tuple[str, ...] | list[str] = FEATURE_NAMES) -> str:
    """'sha256:<hex>' of the feature names joined by newlines: what a dataset and a model's sidecar record as
    the layout they were made with, so a renamed, added or moved feature is caught at load time."""
    return "sha256:" + hashlib.sha256("\n".join(names).encode()).hexdigest()
