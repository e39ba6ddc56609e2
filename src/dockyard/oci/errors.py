"""The error catalogue of the distribution spec, as exceptions.

Every failure a client can cause is one of these; the HTTP layer turns it into
``{"errors": [{"code", "message", "detail"}]}`` with the status given here.
"""

from __future__ import annotations

from typing import Any, ClassVar


class RegistryError(Exception):
    """A failure with a spec error code, an HTTP status and a message for the client."""

    code: ClassVar[str] = "UNKNOWN"
    status: ClassVar[int] = 500
    default_message: ClassVar[str] = "unknown error"

    def __init__(
        self,
        message: str | None = None,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.detail = detail
        self.headers = headers or {}
        super().__init__(self.message)

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return {"errors": [entry]}


class BlobUnknown(RegistryError):
    code = "BLOB_UNKNOWN"
    status = 404
    default_message = "blob unknown to registry"


class BlobUploadInvalid(RegistryError):
    code = "BLOB_UPLOAD_INVALID"
    status = 400
    default_message = "blob upload invalid"


class BlobUploadUnknown(RegistryError):
    code = "BLOB_UPLOAD_UNKNOWN"
    status = 404
    default_message = "blob upload unknown to registry"


class DigestInvalid(RegistryError):
    code = "DIGEST_INVALID"
    status = 400
    default_message = "provided digest did not match uploaded content"


class ManifestBlobUnknown(RegistryError):
    code = "MANIFEST_BLOB_UNKNOWN"
    status = 400
    default_message = "manifest references a manifest or blob unknown to registry"


class ManifestInvalid(RegistryError):
    code = "MANIFEST_INVALID"
    status = 400
    default_message = "manifest invalid"


class ManifestUnknown(RegistryError):
    code = "MANIFEST_UNKNOWN"
    status = 404
    default_message = "manifest unknown to registry"


class NameInvalid(RegistryError):
    code = "NAME_INVALID"
    status = 400
    default_message = "invalid repository name"


class NameUnknown(RegistryError):
    code = "NAME_UNKNOWN"
    status = 404
    default_message = "repository name not known to registry"


class SizeInvalid(RegistryError):
    code = "SIZE_INVALID"
    status = 400
    default_message = "provided length did not match content length"


class Unauthorized(RegistryError):
    code = "UNAUTHORIZED"
    status = 401
    default_message = "authentication required"


class Denied(RegistryError):
    code = "DENIED"
    status = 403
    default_message = "requested access to the resource is denied"


class Unsupported(RegistryError):
    code = "UNSUPPORTED"
    status = 405
    default_message = "the operation is unsupported"


class TooManyRequests(RegistryError):
    code = "TOOMANYREQUESTS"
    status = 429
    default_message = "too many requests"


class PaginationNumberInvalid(RegistryError):
    code = "PAGINATION_NUMBER_INVALID"
    status = 400
    default_message = "invalid number of results requested"


class RangeInvalid(RegistryError):
    """An upload chunk that does not start where the upload ends (416)."""

    code = "BLOB_UPLOAD_INVALID"
    status = 416
    default_message = "requested range not satisfiable"


class ManifestTooLarge(RegistryError):
    code = "MANIFEST_INVALID"
    status = 413
    default_message = "manifest too large"


class BodyTooLarge(RegistryError):
    code = "SIZE_INVALID"
    status = 413
    default_message = "request body too large"


class NotFound(RegistryError):
    code = "NOT_FOUND"
    status = 404
    default_message = "no such endpoint"


class MethodNotAllowed(RegistryError):
    code = "UNSUPPORTED"
    status = 405
    default_message = "method not allowed on this endpoint"


class Unavailable(RegistryError):
    code = "UNAVAILABLE"
    status = 503
    default_message = "the registry is temporarily unavailable"
