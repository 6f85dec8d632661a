"""Kafka request entities for tests, built from kio's schemas with every field defaulted.

``make(api_key, version, "ClassName", **fields)`` builds one entity of that request's
schema module (the request itself without a class name); fields the version does not
have are dropped, so one call serves several versions; unnamed fields get neutral values
(-1, "", empty arrays, None where nullable).
"""

from __future__ import annotations

import datetime
import sys
from typing import Any

from kio.index import load_request_schema

from federation.protocol import codec
from federation.protocol.errors import _build, to_kio
from federation.proxy.routing import replace

NO_TIMEOUT = datetime.timedelta(milliseconds=0)


def make(api_key: int, version: int, class_name: str | None = None, **fields: Any) -> Any:
    schema: Any = load_request_schema(api_key, version)
    cls = schema if class_name is None else getattr(sys.modules[schema.__module__], class_name)
    return replace(_build(cls, None, (), to_kio(0), {}, version), **fields)


def request(entity: Any, client_id: str = "fk-test") -> codec.Request:
    header = codec.RequestHeader(int(entity.__api_key__), int(entity.__version__), 1, client_id)
    return codec.Request(header, entity)
