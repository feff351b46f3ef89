"""`xylen serve`: the inference server (app factory, routes, decoding, hot swap, auth, metrics)."""
