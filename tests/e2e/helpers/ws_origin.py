"""A TLS WebSocket echo origin (python3-websockets 10.4, asyncio, in its own thread).

It records the headers of every upgrade request so a test can check the
credential the proxy injected into the handshake.
"""
import asyncio
import ssl
import threading

import websockets


class WSOrigin:
    def __init__(self, cert, key):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.upgrades = []  # list of [(name, value), ...] per upgrade request
        self.messages = []  # every message the origin echoed
        self.port = None
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error = None
        self.thread = threading.Thread(target=self._run, name="ws-origin", daemon=True)
        self.thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("websocket origin did not start")
        if self._error:
            raise self._error

    def _run(self):
        asyncio.set_event_loop(self.loop)
        try:
            self.server = self.loop.run_until_complete(
                websockets.serve(self._echo, "127.0.0.1", 0, ssl=self.ctx,
                                 process_request=self._process_request, max_size=2 ** 22))
            self.port = self.server.sockets[0].getsockname()[1]
        except Exception as e:  # reported to the constructor
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.server.close()
        self.loop.run_until_complete(self.server.wait_closed())
        self.loop.close()

    async def _process_request(self, path, headers):
        self.upgrades.append((path, list(headers.raw_items())))
        return None

    async def _echo(self, ws, *args):
        try:
            async for msg in ws:
                self.messages.append(msg)
                await ws.send(msg)
        except websockets.ConnectionClosed:
            pass

    def upgrade_values(self, index, name):
        name = name.lower()
        return [v for n, v in self.upgrades[index][1] if n.lower() == name]

    def close(self):
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
