"""What each kind of document may be: the content types it allows, and whether the bytes are
what their content type says (by their first bytes, as file(1) tells them apart).

>>> media_type("Image/PNG; name=photo.png")
'image/png'
>>> allowed_types(documents_pb2.PHOTO)
('image/png', 'image/jpeg')
>>> looks_like("application/pdf", b"%PDF-1.7 ...")
True
"""

from __future__ import annotations

import types
from collections.abc import Mapping

from hms.documents.v1 import documents_pb2

__all__ = ["KIND_NAMES", "SIGNATURES", "allowed_types", "kind_name", "looks_like", "media_type"]

KIND_NAMES: Mapping[int, str] = types.MappingProxyType(
    {number: name for name, number in documents_pb2.DocumentKind.items()}
)

_ALLOWED: Mapping[int, tuple[str, ...]] = types.MappingProxyType(
    {
        documents_pb2.PAY_STUB: ("application/pdf", "image/png", "image/jpeg"),
        documents_pb2.PHOTO: ("image/png", "image/jpeg"),
        documents_pb2.LICENCE: ("application/pdf",),
    }
)

#: How a file of each allowed type begins.
SIGNATURES: Mapping[str, bytes] = types.MappingProxyType(
    {
        "application/pdf": b"%PDF-",
        "image/png": b"\x89PNG\r\n\x1a\n",
        "image/jpeg": b"\xff\xd8\xff",
    }
)


def kind_name(kind: int) -> str:
    """The enum name of `kind`, or its number for one the contract does not define."""
    return KIND_NAMES.get(kind, str(kind))


def allowed_types(kind: int) -> tuple[str, ...]:
    """The content types `kind` allows; () for UNSPECIFIED or an unknown kind."""
    return _ALLOWED.get(kind, ())


def media_type(content_type: str) -> str:
    """The type/subtype of a Content-Type, lower case, without parameters (RFC 9110: the type
    and subtype are case-insensitive)."""
    return content_type.split(";", 1)[0].strip().lower()


def looks_like(media: str, data: bytes) -> bool:
    """Whether `data` starts as a file of `media` (one of SIGNATURES' types) does."""
    return data.startswith(SIGNATURES[media])
