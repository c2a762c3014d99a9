"""Error types whose message is what the user or site admin needs to read.

Every layer raises one of these with a complete, single-line sentence; the
SPANK bridge and the CLIs print `str(error)` as is and turn it into a failure.
"""


class ShifterError(Exception):
    """Base class: the message is meant for a person, not a traceback."""


class ConfigError(ShifterError):
    """udiRoot.conf, plugin arguments or gateway configuration are wrong."""


class ImageRefError(ShifterError, ValueError):
    """An image descriptor (`docker:ubuntu:22.04`, `id:<hex>`) is malformed."""


class VolumeError(ShifterError, ValueError):
    """A --volume specification is malformed or forbidden by site policy."""


class ImageNotFound(ShifterError):
    """The image is unknown to the gateway or missing from the image directory."""


class GatewayError(ShifterError):
    """The image gateway could not be reached or refused the request."""


class ContainerError(ShifterError):
    """Building, entering or tearing down a job's container failed."""


class AuthenticationError(ShifterError):
    """A munge credential is missing, invalid, expired or replayed."""


class AccessDenied(ShifterError):
    """The caller is authenticated but not allowed to do this (admin, ACL, import)."""


class RegistryError(ShifterError):
    """A registry could not be reached, refused a request or served something invalid."""


class RegistryAuthError(RegistryError):
    """A registry refused the credentials given (or their absence) for an image."""


class DigestMismatch(RegistryError):
    """Content from a registry or the layer cache does not match its sha256 digest."""


class ImageContentError(ShifterError):
    """An image's layers are malformed or hostile, so the image is refused."""


class ConversionError(ShifterError):
    """Turning an image's layers into a squashfs failed."""


class ModuleError(ShifterError, ValueError):
    """A --module request names an unknown, disabled or conflicting site module."""


class CcmError(ShifterError):
    """--ccm cannot be honoured: disabled by the site, or no sshd for the job on a node."""
