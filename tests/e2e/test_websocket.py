"""WebSocket through CONNECT + intercepted TLS: the upgrade request carries the injected
credential, and frames are relayed both ways after the 101."""
import asyncio
import os

import websockets

from conftest import header_rule
from helpers import client


async def _echo_session(raw_sock, cafile, messages):
    ctx = client.client_tls_context(cafile)
    ctx.set_alpn_protocols([])  # websockets speaks HTTP/1.1 only
    async with websockets.connect("wss://ws.example.test/echo", sock=raw_sock, ssl=ctx,
                                  server_hostname="ws.example.test", open_timeout=5,
                                  close_timeout=2, max_size=2 ** 22,
                                  extra_headers=[("Authorization", "Bearer sandbox-fake")]) as ws:
        # Several frames in flight at once, then one at a time.
        for m in messages[:3]:
            await ws.send(m)
        got = [await asyncio.wait_for(ws.recv(), 5) for _ in messages[:3]]
        for m in messages[3:]:
            await ws.send(m)
            got.append(await asyncio.wait_for(ws.recv(), 5))
        return got


def test_websocket_upgrade_gets_the_credential_and_echoes_frames(stack):
    origin = stack.ws_origin("ws.example.test")
    key = stack.secret()
    rule = header_rule("ws", ["ws.example.test"], [("Authorization", "workspace_secret", "Bearer {K}")])
    d = stack.start({"rules": [rule]}, secrets={"K": key})
    raw, resp = client.connect(d.port, "ws.example.test:443")
    assert resp.status == 200, resp
    messages = ["hello", b"\x00\x01binary\xff", "x" * 200, os.urandom(70000), "last"]
    try:
        got = asyncio.run(asyncio.wait_for(_echo_session(raw, stack.ca, messages), 20))
    finally:
        raw.close()
    assert got == messages
    assert len(origin.upgrades) == 1
    assert origin.upgrade_values(0, "Authorization") == ["Bearer " + key]
    assert origin.upgrade_values(0, "Upgrade")[0].lower() == "websocket"
