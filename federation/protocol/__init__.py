"""Sans-IO Kafka protocol core: framing, kio-based codec, versions, record batches.

Importing this package applies the kio compatibility patches (see
:mod:`federation.protocol._kio_compat`); import it before any other code
decodes with kio.
"""

from . import _kio_compat

_kio_compat.install()

from .codec import (  # noqa: E402
    CodecError,
    DecodeError,
    EncodeError,
    Request,
    RequestHeader,
    UnsupportedVersion,
    api_versions_fallback_response,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    parse_request_header,
    peek_correlation_id,
)
from .errors import ErrorCode, error_response, to_kio  # noqa: E402
from .framing import (  # noqa: E402
    BadFrameLength,
    FrameError,
    FrameReader,
    FrameTooLarge,
    frame,
    frame_parts,
)
from .versions import API_NAMES, SUPPORTED, ApiKey, clamp  # noqa: E402

__all__ = (
    "API_NAMES",
    "SUPPORTED",
    "ApiKey",
    "BadFrameLength",
    "CodecError",
    "DecodeError",
    "EncodeError",
    "ErrorCode",
    "FrameError",
    "FrameReader",
    "FrameTooLarge",
    "Request",
    "RequestHeader",
    "UnsupportedVersion",
    "api_versions_fallback_response",
    "clamp",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "error_response",
    "frame",
    "frame_parts",
    "parse_request_header",
    "peek_correlation_id",
    "to_kio",
)
