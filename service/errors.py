"""The service's error hierarchy. Each error carries its HTTP status and a stable code; one handler in
``service.app`` turns them into ``{"error": {"code", "message"}}`` responses."""

from __future__ import annotations


class DedeError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(DedeError):
    status_code = 400
    code = "bad_request"


class BadImage(BadRequest):
    code = "bad_image"


class UnsupportedFormat(BadImage):
    status_code = 415
    code = "unsupported_format"


class ImageTooLarge(BadImage):
    status_code = 413
    code = "image_too_large"


class ImageTooComplex(BadImage):
    """Well-formed but too costly to decode: too many JPEG scans, too much PNG text, a decode past its time."""

    status_code = 422
    code = "image_too_complex"


class PayloadTooLarge(BadRequest):
    status_code = 413
    code = "payload_too_large"


class Unauthorized(DedeError):
    status_code = 401
    code = "unauthorized"


class NotReady(DedeError):
    status_code = 503
    code = "not_ready"


class Overloaded(DedeError):
    status_code = 503
    code = "overloaded"


class BundleError(DedeError):
    """A bundle that is missing, malformed or fails its hash check. Raised at start-up, never per request."""

    code = "bundle_error"


class ModelNotFound(DedeError):
    """A V2 request for another model name or version than the loaded bundle's."""

    status_code = 404
    code = "model_not_found"
