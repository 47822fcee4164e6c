"""Who may call a routed method, as its contract says: the ``(hms.api.v1.access)`` method option.

protos/hms/api/v1/access.proto defines it::

    rpc Apply(ApplyRequest) returns (Application) {
      option (google.api.http) = {post: "/v1/housing/applications" body: "*"};
      option (hms.api.v1.access) = {scopes: "housing:apply"};
    }

``public: true`` needs no token; ``scopes`` must all be held by the caller's token; a method
without the option needs a valid token and no scope. The gateway has no generated code for the
services it fronts, so the option is read from the descriptors alone: the extension and its
``Access`` message are looked up in the pool the method came from (reflection brings
hms/api/v1/access.proto with the file that imports it), and the method's options are parsed with
that pool's own ``MethodOptions`` class, which knows the extension. Nothing here depends on the
gateway's process having imported the option's generated module.
"""

from __future__ import annotations

import re
from collections.abc import Container
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from google.protobuf import descriptor_pb2, message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import DecodeError, Message

if TYPE_CHECKING:
    from google.protobuf.internal.extension_dict import _ExtensionFieldDescriptor

__all__ = ["ACCESS_EXTENSION", "Access", "access_of"]

ACCESS_EXTENSION = "hms.api.v1.access"
"""The full name of the method option (an extension of ``google.protobuf.MethodOptions``)."""
_METHOD_OPTIONS = "google.protobuf.MethodOptions"

# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ). A scope with a space could never
# be held: the `scope` claim is a space-separated list.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


@dataclass(frozen=True, slots=True)
class Access:
    """A method's access rule: ``public`` (no token), or the ``scopes`` a token must hold
    (every one; none: any valid token).

    >>> Access(scopes=("housing:apply",)).missing({"housing:read"})
    ('housing:apply',)
    >>> Access(public=True, scopes=("a",))
    Traceback (most recent call last):
    ...
    ValueError: a public method needs no token, so it cannot require scopes ('a')
    """

    scopes: tuple[str, ...] = ()
    public: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.scopes, tuple):
            raise ValueError(f"scopes must be a tuple of strings, not {self.scopes!r}")
        for scope in self.scopes:
            if not isinstance(scope, str) or _SCOPE_TOKEN.fullmatch(scope) is None:
                raise ValueError(
                    f"scope {scope!r} is not a scope token (printable ASCII without spaces, "
                    "'\"' or '\\', RFC 6749 §3.3)"
                )
        if self.public and self.scopes:
            raise ValueError(
                "a public method needs no token, so it cannot require scopes "
                f"({', '.join(map(repr, self.scopes))})"
            )

    def missing(self, granted: Container[str]) -> tuple[str, ...]:
        """The required scopes not in `granted`, in the contract's order."""
        return tuple(scope for scope in self.scopes if scope not in granted)


def access_of(method: MethodDescriptor) -> Access:
    """The method's ``(hms.api.v1.access)`` rule; ``Access()`` when it has none.

    Raises ``ValueError`` naming the method when the option is set but cannot be read or
    breaks the contract (``public`` with ``scopes``, a scope with a space): refusing the
    method is safer than guessing who may call it.
    """
    pool = method.containing_service.file.pool
    try:
        extension = pool.FindExtensionByName(ACCESS_EXTENSION)
    except KeyError:
        return Access()  # its files never import access.proto: none of its methods has it
    proto = descriptor_pb2.MethodDescriptorProto()
    method.CopyToProto(proto)
    # Serialized, the option is there as an extension the default pool knows or as an unknown
    # field; the options class of the method's own pool parses it either way.
    data = proto.options.SerializeToString()
    try:
        options = _options_class(pool, extension).FromString(data)
        handle = cast("_ExtensionFieldDescriptor[Message, Message]", extension)
        if not options.HasExtension(handle):
            return Access()
        # hms.api.v1.Access of the method's pool: a message class made at run time.
        option: Any = options.Extensions[handle]
        scopes, public = tuple(option.scopes), bool(option.public)
    except (AttributeError, DecodeError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{method.full_name}: option ({ACCESS_EXTENSION}) cannot be read: {exc}"
        ) from None
    try:
        return Access(scopes=scopes, public=public)
    except ValueError as exc:
        raise ValueError(f"{method.full_name}: option ({ACCESS_EXTENSION}): {exc}") from None


def _options_class(pool: DescriptorPool, extension: FieldDescriptor) -> type[Message]:
    """``google.protobuf.MethodOptions`` of `pool`, with the access extension registered."""
    options_type = extension.containing_type
    if options_type is None or options_type.full_name != _METHOD_OPTIONS:
        raise TypeError(f"{ACCESS_EXTENSION} does not extend {_METHOD_OPTIONS}")
    files = [pool.FindFileContainingSymbol(ACCESS_EXTENSION).name, options_type.file.name]
    return message_factory.GetMessageClassesForFiles(files, pool)[_METHOD_OPTIONS]
