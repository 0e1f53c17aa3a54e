"""Proxy mode: SageMaker's contract in front of an external scoring server.

`client` is a pooled keep-alive HTTP/1.1 client, `health` the cached upstream check behind
/ping, `keeper` starts and supervises the scoring server, `adapters` translate payloads for
servers whose API is not SageMaker-shaped, `service` puts them together for the app.
"""
