"""The gateway's own errors: what only its requests, pulls and transfers can meet.

Errors the nodes share with the gateway (ImageNotFound, ImageContentError,
AccessDenied, ...) stay in shifter_core/errors.py: nodes never import gateway/.
"""
from __future__ import annotations

from shifter_core.errors import ShifterError


class BadRequest(ShifterError):
    """The request is malformed (bad tag, bad ACL list, missing field, too large)."""


class RegistryError(ShifterError):
    """A registry could not be reached, refused a request or served something invalid."""


class RegistryAuthError(RegistryError):
    """A registry refused the credentials given (or their absence) for an image."""


class DigestMismatch(RegistryError):
    """Content from a registry or the layer cache does not match its sha256 digest."""


class ConversionError(ShifterError):
    """Turning an image's layers into a squashfs failed."""


class TransferError(ShifterError):
    """Copying an image to a system's image directory failed."""
