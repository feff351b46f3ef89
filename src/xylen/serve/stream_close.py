"""uvicorn's WebSocket protocol, except that a server shutdown closes open sockets with 1001 (going away).

uvicorn closes every open WebSocket with 1012 (service restart) when it shuts down; /ws/predict documents 1001,
which is what RFC 6455 says a server that goes down sends. uvicorn calls ``shutdown()`` on each connection only
after `xylen serve`'s drain (the --drain-seconds wait, in one process and in every --workers process alike), so
streams keep flowing while readiness fails and close once the server really stops. Named in the server's uvicorn
config as ``ws="xylen.serve.stream_close:GoingAwayProtocol"``, so each worker process imports it itself.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState

GOING_AWAY = 1001
REASON = "server shutting down"


class GoingAwayProtocol(WebSocketsSansIOProtocol):
    def shutdown(self) -> None:
        if self.handshake_complete and not self.close_sent and not self.transport.is_closing():
            try:
                self.conn.send_close(GOING_AWAY, REASON)
            except InvalidState:  # the client's close crossed ours: uvicorn's own path below finishes it
                pass
            else:
                self.transport.write(b"".join(self.conn.data_to_send()))
                self.close_sent = True  # uvicorn's shutdown below then only closes the transport
                self.queue.put_nowait({"type": "websocket.disconnect", "code": GOING_AWAY, "reason": REASON})
        super().shutdown()
