"""Built-in strategies, each a procs.api.Strategy selected by dotted path (strategy.name):

- `procs.strategies.market_maker:MarketMaker` — ML-skewed market maker (the default);
- `procs.strategies.execution:Twap` / `:Vwap` — parent orders sliced over a window, naive and ML-hybrid
  sleeves side by side (A/B in one run);
- `procs.strategies.scalper:SurgeScalper` — liquidity-surge scalping with ATR exits.
"""
