"""The multi-model container API's routes, as SageMaker calls them (sagemaker-contract.md §4):

    POST   /models                  {"model_name": NAME, "url": DIR} -> 200 once it predicts
    GET    /models                  ?limit=N&next_page_token=T -> {"models": [...], "nextPageToken"}
    GET    /models/NAME             -> {"modelName": NAME, "modelUrl": DIR}
    DELETE /models/NAME             -> 200 once every worker has let it go
    POST   /models/NAME/invoke      answered as /invocations is (the App does that part)

https://docs.aws.amazon.com/sagemaker/latest/dg/mms-container-apis.html
Pagination follows the AWS multi-model server's: `limit` 1-100 (else 100), the token an offset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from sagehost.errors import InvalidPayload, MethodNotAllowed, NotFound
from sagehost.multimodel.registry import Registry
from sagehost.service import Service

PREFIX = "/models"
_INVOKE = "/invoke"
PAGE_MAX = 100
_NAME_MAX = 1024


class Routes:
    """What the App delegates /models and its sub-paths to."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def invoked(self, path: str) -> str | None:
        """The model's name when `path` is /models/NAME/invoke."""
        if path.startswith(PREFIX + "/") and path.endswith(_INVOKE):
            name = path[len(PREFIX) + 1 : -len(_INVOKE)]
            return name if name and "/" not in name else None
        return None

    def service(self, name: str) -> Service:
        return self.registry.service(name)

    async def manage(self, verb: str, path: str, query: Mapping[str, str], body: bytes) -> tuple[int, bytes]:
        """Every route but invoke: (status, JSON body); errors are raised."""
        if path in (PREFIX, PREFIX + "/"):
            if verb == "POST":
                return 200, await self._load(body)
            if verb in ("GET", "HEAD"):
                return 200, self._list(query)
            raise MethodNotAllowed(f"Use GET or POST on {PREFIX}, not {verb}.")
        name = path[len(PREFIX) + 1 :]
        if not name or "/" in name:
            raise NotFound(f"No route {path[:100]!r}: the routes are /models, /models/NAME and /models/NAME/invoke.")
        if verb in ("GET", "HEAD"):
            return 200, self._describe(name)
        if verb == "DELETE":
            await self.registry.remove(name)
            return 200, orjson.dumps({"status": f"Model {name} unloaded"})
        raise MethodNotAllowed(f"Use GET or DELETE on {PREFIX}/NAME, not {verb}.")

    async def _load(self, body: bytes) -> bytes:
        name, url = _load_request(body)
        await self.registry.add(name, url)
        return orjson.dumps({"status": f"Model {name} loaded"})

    def _list(self, query: Mapping[str, str]) -> bytes:
        limit = _whole(query.get("limit"), "limit", PAGE_MAX)
        start = _whole(query.get("next_page_token"), "next_page_token", 0)
        limit = limit if 1 <= limit <= PAGE_MAX else PAGE_MAX
        loaded = sorted((n, r.url) for n, r in self.registry.shared.read().items() if r.phase == "ready")
        page: dict[str, Any] = {"models": [{"modelName": n, "modelUrl": u} for n, u in loaded[start : start + limit]]}
        if start + limit < len(loaded):
            page["nextPageToken"] = str(start + limit)
        return orjson.dumps(page)

    def _describe(self, name: str) -> bytes:
        record = self.registry.shared.read().get(name)
        if record is None or record.phase != "ready":
            raise NotFound(f"Model {name[:200]!r} is not loaded.")
        return orjson.dumps({"modelName": name, "modelUrl": record.url})


def _load_request(body: bytes) -> tuple[str, str]:
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        request = None
    if not isinstance(request, dict):
        raise InvalidPayload('POST /models takes a JSON object: {"model_name": NAME, "url": DIRECTORY}.')
    name, url = request.get("model_name"), request.get("url")
    if not isinstance(name, str) or not name or "/" in name or len(name) > _NAME_MAX:
        raise InvalidPayload(f'"model_name" must be a name of 1-{_NAME_MAX} characters without "/".')
    if not isinstance(url, str) or not url:
        raise InvalidPayload('"url" must be the model\'s directory, e.g. /opt/ml/models/NAME/model.')
    return name, url


def _whole(text: str | None, what: str, default: int) -> int:
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidPayload(f"{what} must be a whole number.") from None
    if value < 0:
        raise InvalidPayload(f"{what} must not be negative.")
    return value
