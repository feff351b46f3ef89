"""xylen: collect Binance market data, train LightGBM signal models sized to the machine, serve them fast."""

__version__ = "0.1.0"
