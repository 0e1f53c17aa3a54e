"""Proxy mode: SageMaker's contract in front of an external scoring server.

`health` is the cached upstream check behind /ping, `keeper` starts and supervises the
scoring server, `adapters` translate payloads for servers whose API is not SageMaker-shaped,
`service` puts them together for the app with the pooled upstream client (sagehost.http.client),
and `relay` forwards transparent requests straight from the server's connection to that client.
"""
