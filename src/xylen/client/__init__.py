"""A small Python client for a xylen server, so a bot needs no hand-written HTTP or WebSocket code.

    from xylen.client import Client

    with Client("http://127.0.0.1:8000", key=None) as xy:
        print(xy.predict(candles, symbol="BTCUSDT", timeframe="5m"))    # POST /predict
        with xy.stream() as stream:                                      # GET /ws/predict
            sub = stream.subscribe("BTCUSDT", "5m", push=True)
            for p in sub:                                                # a prediction per stored candle
                print(p["open_time"], p["prediction"], p["confidence"])

``AsyncClient`` is the same for asyncio (``await xy.predict(...)``, ``async for p in sub``). HTTP goes through one
keep-alive httpx pool, the stream through ``websockets``. Every refusal raises ``ClientError`` carrying the server's
sentence (``.status``: HTTP status or WebSocket close code; ``.message``). A closed stream is not reopened: open a
new one. Importing this package loads neither numpy, polars nor lightgbm: a bot's process stays small.
"""

from xylen.client.http import AsyncClient, Client, ClientError
from xylen.client.stream import AsyncStream, AsyncSubscription, Stream, Subscription

__all__ = ["AsyncClient", "AsyncStream", "AsyncSubscription", "Client", "ClientError", "Stream", "Subscription"]
