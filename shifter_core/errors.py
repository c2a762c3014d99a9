"""Error types whose message is what the user or site admin needs to read.

Every layer raises one of these with a complete, single-line sentence; the
SPANK bridge and the CLIs print `str(error)` as is and turn it into a failure.

On a node, the class also says whose fault it is.  A JobFault was caused by
the job (its options, its image, its ACL, its image file): it fails that job
and leaves the node in service.  Any other error is the node's (its loop
devices, runDir, site configuration) and drains the node.  Errors only the
image gateway meets live in gateway/errors.py.
"""


class ShifterError(Exception):
    """Base class: the message is meant for a person, not a traceback."""


def internal_error(error: BaseException) -> str:
    """The reason given for a bug of ours that a job or step ran into: it fails that job
    or step only, never the node."""
    return f"internal error of shifter (please report it): {error!r}"


def one_line(text: str) -> str:
    """`text` as one printable line (for Slurm's logs, reasons and comments)."""
    return "".join(char if char.isprintable() else " " for char in text).strip()


class JobFault(ShifterError):
    """The job caused this failure; on a node it fails the job, never the node."""


class ConfigError(ShifterError):
    """udiRoot.conf, plugin arguments or gateway configuration are wrong."""


class ImageRefError(JobFault, ValueError):
    """An image descriptor (`docker:ubuntu:22.04`, `id:<hex>`) is malformed."""


class VolumeError(JobFault, ValueError):
    """A --volume specification is malformed or forbidden by site policy."""


class ImageNotFound(JobFault):
    """The image is unknown to the gateway or missing from the image directory."""


class GatewayError(ShifterError):
    """The image gateway could not be reached or refused the request."""


class ContainerError(ShifterError):
    """Building, entering or tearing down a job's container failed."""


class AuthenticationError(ShifterError):
    """A munge credential is missing, invalid, expired or replayed."""


class AccessDenied(JobFault):
    """The caller is authenticated but not allowed to do this (admin, ACL, import)."""


class ImageContentError(JobFault):
    """An image's config, layers or metadata are malformed or hostile, so the image is refused."""


class ModuleError(JobFault, ValueError):
    """A --module request names an unknown, disabled or conflicting site module."""


class CcmError(JobFault):
    """--ccm cannot be honoured: disabled by the site, or no sshd for the job on a node."""


class TaskOptionError(JobFault, ValueError):
    """--workdir, --entrypoint or --env cannot be honoured: a directory the container
    lacks, an image without ENTRYPOINT, a malformed name."""
