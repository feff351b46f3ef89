"""POST /predict: body bytes -> signal bytes. No I/O, no imports, no logging; one counter per request."""

from __future__ import annotations

import orjson

from xylen.core import features
from xylen.serve.decode import RequestError, decode_predict, feature_vector
from xylen.serve.state import ServeState


def predict(state: ServeState, body: bytes) -> bytes:
    """The alpha's /predict. Raises RequestError (4xx/503) with a sentence naming the field and the fix."""
    req = decode_predict(body)
    holder = state.holder
    live_map = holder.live  # read once: a swap during this request does not change our model
    live = None
    if req.symbol is not None and req.timeframe is not None:
        live = live_map.get(f"{req.symbol.lower()}-{req.timeframe}")
    if live is None:
        live = holder.default()
    if live is None:
        raise RequestError(503, f"No model is ready ({holder.not_ready_reason() or 'loading'}); retry shortly "
                                "or see GET /health/ready.")
    if req.candles is not None and live.computes_features:
        row = features.last_row(req.candles)
    elif req.features is not None:
        row = feature_vector(req.features, live.bundle.feature_names)
    else:
        fs = live.bundle.manifest.feature_set.version
        raise RequestError(422, f"Model {live.name!r} {live.version} was trained on feature set {fs!r}, which this "
                                f"server does not compute from candles ({features.VERSION!r}); send 'features' "
                                f"with its {live.bundle.num_feature()} values instead.")
    p = live.predict_row(row)
    cls = 1 if p >= 0.5 else 0
    state.metrics.predicted(live.name, cls)
    return orjson.dumps({"prediction": cls, "confidence": p if cls else 1.0 - p, "model_version": live.version,
                         "model": live.name, "probability": p,
                         "feature_set": live.bundle.manifest.feature_set.version})
