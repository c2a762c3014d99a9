"""Node side: the job prolog and epilog, as root, once per job on every node.

The prolog builds the job's container from the digest pinned at submit, or
for a job held until its image was pulled, from the pin the releaser put in
the job's comment (shifter_core/pullhold.py): the node never asks the
gateway.  It re-checks everything the submitting client checked (image ACL,
volume policy, modules): the client runs as the user and is not trusted.
The epilog tears the container down, whatever state the prolog left.  Both
append what they did to the provenance log.
"""
from __future__ import annotations

import os

from .. import container, etcfiles, hostlist, imageref, provenance, pullhold, seam, slurmctl
from ..errors import AccessDenied, JobFault, ShifterError, internal_error, one_line
from ..imagestore import ImageMeta, ImageStore
from . import nodeserver, settings
from .bridge import log_error, log_exception, log_info


def node_name() -> str:
    """This node's name, as the prolog and the tasks both can tell it."""
    return os.uname().nodename.split(".")[0]


def job_prolog(spank, opts) -> None:
    """Build the job's container here.  A failure the job caused is recorded for its
    tasks and shown in its AdminComment, and the prolog succeeds: the node stays in
    service.  A failure of the node drains it, with the reason."""
    if not opts.image:
        return
    cfg = settings.site_config(spank)
    node = node_name()
    try:
        _set_up(spank, opts, cfg, node)
    except JobFault as error:
        _fail_job(cfg, spank.job_id, node, one_line(str(error)))
    except ShifterError as error:
        _drain(node, f"shifter: {one_line(str(error))}")
        raise
    except Exception as error:      # noqa: BLE001 - a bug a job triggers fails that job only
        log_exception()
        _fail_job(cfg, spank.job_id, node, internal_error(error))


def _set_up(spank, opts, cfg, node: str) -> None:
    extensions = ()
    if opts.ccm:
        from .. import ccm   # its imports cost tens of ms: only for CCM jobs

        ccm.require_enabled(settings.parse_args(spank.args))
        extensions = (ccm.Sshd(ccm.open_secret(os.environ.get(f"SPANK_{ccm.SECRET_VARIABLE}", ""), spank.uid)),)
    spec, pinned = container_spec(
        cfg, job_id=spank.job_id, node=node, uid=spank.uid,
        request=os.environ.get(f"SPANK_{seam.REQUEST_VAR}", opts.image), image=opts.image,
        digest=os.environ.get(f"SPANK_{seam.DIGEST_VAR}", ""),
        pending=os.environ.get(f"SPANK_{pullhold.PENDING_VAR}"),
        volume=opts.volume or "", module=opts.module, extensions=extensions)
    user = spec.user
    log = provenance.Log.open(cfg.provenance_dir, spec.node)   # unwritable: refused before any mount
    try:
        job = container.create(cfg, spec)
        elapsed = spank.elapsed_ms()
        phases = " ".join(f"{k}={v:.1f}ms" for k, v in job.timings.items())
        how = "in the node server" if nodeserver.serving() else "Python start included"
        log_info(f"shifter: job {job.job_id} on {job.node} runs {job.digest} for {user.name} "
                 f"(prolog {elapsed:.1f}ms, {how}; container {phases})")
        if log is not None:
            log.write("setup", job.job_id, user=user.name, uid=user.uid, request=spec.request,
                      digest=job.digest, pinned=pinned, nodes=os.environ.get("SLURM_NODELIST", ""),
                      ms=provenance.milliseconds(lookup=_lookup_ms(), mount=job.timings.get("mount"),
                                                 setup=job.timings.get("setup"), prolog=elapsed))
    finally:
        if log is not None:
            log.close()


def _fail_job(cfg, job_id: int, node: str, reason: str) -> None:
    """The job's own fault: its tasks on this node fail with `reason`, in srun's stderr
    and the batch output; slurmctld shows it in the job's AdminComment."""
    container.record_failure(cfg, job_id, node, reason)
    log_error(f"shifter: job {job_id} fails on {node}: {reason}")
    try:
        slurmctl.Slurm(os.environ.get("SLURM_CONF")).set_admin_comment(job_id, f"shifter: {reason}"[:1024])
    except ShifterError as error:
        log_error(f"shifter: cannot note the failure in job {job_id}'s AdminComment: {error}")


def _drain(node: str, reason: str) -> None:
    """The node's own fault: slurmd drains it for the failed prolog; give it our reason first."""
    try:
        slurmctl.Slurm(os.environ.get("SLURM_CONF")).drain(node, reason[:1024])
    except ShifterError as error:
        log_error(f"shifter: cannot drain {node} with the reason ({reason}): {error}")


def job_epilog(spank, opts) -> None:
    cfg = settings.site_config(spank)
    if container.destroy(cfg, spank.job_id, node_name()):
        provenance.record(cfg.provenance_dir, node_name(), "teardown", spank.job_id,
                          ms=provenance.milliseconds(epilog=spank.elapsed_ms()))
    if cfg.per_node_cache_path:
        from .. import pernodecache   # only where the site offers caches
        pernodecache.discard(cfg, spank.job_id, node_name())
    if opts.ccm:
        from .. import ccm

        ccm.forget(cfg, spank.job_id, node_name())


def container_spec(cfg, *, job_id: int, node: str, uid: int, request: str, image: str, digest: str,
                   pending: str | None, volume: str, module: str | None, step_id: int | None = None,
                   extensions: tuple = ()) -> tuple[container.ContainerSpec, str]:
    """What the container of a job (or of a step with a view of its own) holds, from what
    was pinned at submit, checked again here: the submitting client is not trusted.
    Also says when the image was pinned: "submit" or "pull"."""
    user = etcfiles.User.lookup(uid)
    meta, image_file, pinned = _image(cfg, user, image, digest, pending)
    spec = container.ContainerSpec(
        job_id=job_id, node=node, image=meta, image_file=image_file, user=user,
        volumes=cfg.user_volumes(volume), modules=cfg.select_modules(module), hosts=tuple(_hosts()),
        request=request, extensions=extensions, step_id=step_id)
    return spec, pinned


def _image(cfg, user: etcfiles.User, image: str, digest: str, pending: str | None) -> tuple[ImageMeta, str, str]:
    """The image: its metadata, its file (or tree), and when it was pinned."""
    ref = imageref.parse(image, cfg.default_image_type)
    if ref.type == imageref.LOCAL:
        if not cfg.allow_local_chroot:
            raise JobFault(f"{ref}: local images are not enabled on this cluster (allowLocalChroot)")
        return ImageMeta(digest=ref.digest, format=imageref.LOCAL), ref.repository, "submit"
    image_id, pinned = _pinned_id(ref, digest, pending)
    store = ImageStore(cfg.image_path)
    meta = store.read(image_id)
    _check_acl(meta, user)
    return meta, store.image_path(meta.id, meta.format), pinned


def _pinned_id(ref: imageref.ImageRef, digest: str, pending: str | None) -> tuple[str, str]:
    """The id of the image to run, and when it was pinned: "submit" or "pull"."""
    if digest.startswith(seam.DIGEST_PREFIX):
        return digest.split(":", 1)[1], "submit"
    if pending:
        pinned = pullhold.pinned_digest(os.environ.get("SLURM_JOB_COMMENT"))
        if pinned is None:
            raise JobFault(f"the job started before its image {pending} was pulled and pinned; is"
                                 " slurm.conf.d/job_submit.lua installed in slurmctld's configuration?")
        return pinned.split(":", 1)[1], "pull"
    if ref.type == "id":
        return ref.image_id, "submit"
    raise JobFault(f"the image {ref} was not pinned to a digest at submit;"
                         " is the shifter plugin configured on the submit host?")


def _lookup_ms() -> float | None:
    """How long the lookup at submit took (the submitting client measured it)."""
    try:
        value = float(os.environ.get(f"SPANK_{seam.LOOKUP_VAR}", ""))
    except ValueError:
        return None
    return value if 0 <= value < 1e9 else None


def _check_acl(meta, user: etcfiles.User) -> None:
    """The gateway's rule again (ImageMeta.may_use): the submitting client is not trusted."""
    if not meta.may_use(user.uid, user.groups):
        kind = "private image" if meta.private else "image"
        raise AccessDenied(f"{user.name} may not use {kind} {meta.digest}: only the users and groups"
                           " on its ACL may")


def _hosts() -> list[str]:
    """/var/hostsfile: each node of the job once per CPU allocated on it."""
    nodes = hostlist.expand(os.environ.get("SLURM_NODELIST", ""))
    counts = []
    for item in os.environ.get("SLURM_JOB_CPUS_PER_NODE", "").split(","):
        number, _, repeat = item.partition("(x")
        if number.isdigit():
            counts.extend([int(number)] * (int(repeat.rstrip(")")) if repeat else 1))
    if len(counts) != len(nodes):
        counts = [1] * len(nodes)
    return [node for node, count in zip(nodes, counts) for _ in range(count)]
