"""HTTP in one home: our server (`server`), its limits (`limits`), and our clients.

The server runs sagehost's ASGI apps for `serve`, `proxy` and the local runtime stand-in; the
proxy's pooled upstream client and the httpx-based client for our own calls off the hot path
(verify, invoke) live here too.
"""
