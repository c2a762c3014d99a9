"""Submit side: sbatch and salloc (allocator context), srun (local context).

Before a job exists, check the options and pin the image: the gateway is asked
once, here, for the digest the tag points to now, and every node and step of
the job uses that digest (no gateway storm at job start, no tag drift).  A bad
option fails the submission with one line.

The pin travels two ways: in the job's environment (SHIFTER_* variables, seen
by the batch script, by the steps and by an srun started inside the job) and
as job-control variables, which the prolog and epilog see as SPANK_SHIFTER_*.
SHIFTER_LOOKUP_MS carries the time this lookup took to the prolog's records.

An image the gateway has not converted yet is pulled now.  The submission
waits (pullWaitAtSubmit) until the pull is done, has failed (the submission
then fails with its reason) or has found the image in its registry; then,
with holdJobsForPull, the job is queued held and pinned when the pull
completes (shifter_core/pullhold.py), otherwise the submission is refused
until the image is READY.
"""
from __future__ import annotations

import os
import time

from .. import imageref, pullhold, seam, taskopts, volumes
from ..errors import ImageNotFound, ImageRefError, ShifterError, TaskOptionError, VolumeError
from . import settings, submitplan
from .bridge import log_info

PINNED = (seam.REQUEST_VAR, seam.IMAGE_VAR, seam.IMAGE_TYPE_VAR, seam.DIGEST_VAR)
POLL_INTERVAL = 0.25


def init_post_opt(spank, opts) -> None:
    cfg = settings.site_config(spank)
    if opts.ccm:
        from .. import ccm   # ccm and the gateway client (requests) cost tens of ms to import:
                             # only jobs that need them pay
        ccm.require_enabled(settings.parse_args(spank.args))
    if not opts.image:
        given = [f"--{n}" for n in ("volume", "module", "autoshift", "ccm", *seam.TASK_OPTIONS) if getattr(opts, n)]
        hint = " (the batch script's directory on the host is Slurm's --chdir)" if opts.workdir else ""
        raise ShifterError(f"{', '.join(given)} needs --image{hint}")
    task_options = taskopts.with_defaults(opts, os.environ)
    taskopts.check(task_options)
    ref = imageref.parse(opts.image, cfg.default_image_type)
    if ref.type == imageref.LOCAL and task_options.entrypoint:
        raise TaskOptionError(f"--entrypoint: {ref} is a directory tree of the nodes, which has no ENTRYPOINT")
    modules = cfg.select_modules(opts.module)
    mounts = cfg.user_volumes(opts.volume or "", base=lambda: _submit_directory(cfg, modules))
    if opts.volume and not mounts:
        raise VolumeError(f"--volume={opts.volume!r} names no volume: give SOURCE:TARGET[:FLAGS]")
    new_job = spank.context == "allocator" or not os.environ.get(seam.JOB_ID_VAR)
    held = None if new_job else _view(os.environ)
    export = _inherited_pin(str(ref), new_job)
    client = None
    if export is None and ref.type == imageref.LOCAL:
        export = _pinned_local(cfg, ref)
    elif export is None:
        started = time.monotonic()
        client = _client(cfg)
        export = _resolve(cfg, client, ref, new_job=new_job)
        export[seam.LOOKUP_VAR] = f"{(time.monotonic() - started) * 1000:.1f}"
    export.setdefault(pullhold.PENDING_VAR, "")
    export[seam.VOLUME_VAR] = volumes.render(mounts)
    export[seam.MODULE_VAR] = ",".join(m.name for m in modules)
    if new_job:
        export[seam.OWN_VIEW_VAR] = "0"
    elif held is None or held != _view(export):
        # the job's container (if any) is not what this step asks for: the step may
        # get its own (shifter_core/spank/step.py decides on each node)
        export[seam.OWN_VIEW_VAR] = "1"
    # CCM jobs run in their containers, as in Shifter
    export[seam.AUTOSHIFT_VAR] = "1" if opts.autoshift or opts.ccm else "0"
    export["SHIFTER_CCM"] = "1" if opts.ccm else "0"
    if opts.volume:
        # what the nodes read as --volume (spank/plugin.c: forward_volumes):
        # every volume, relative sources made absolute
        export[seam.VOLUME_OPTION_VAR] = export[seam.VOLUME_VAR]
    for name, value in export.items():
        os.environ[name] = value
        spank.job_control_setenv(name, value)
    if export.get(seam.DIGEST_VAR):
        # lets the plugin recognise, in C, an srun of this job that asks for
        # the same thing, and skip Python (spank/fastpath.c)
        os.environ[seam.PINNED_OPTIONS_VAR] = pinned_options(opts, export[seam.VOLUME_VAR])
    if opts.ccm:
        # for the prolog only: not in the job's environment
        spank.job_control_setenv(ccm.SECRET_VARIABLE, ccm.new_secret())
    elif ref.type != imageref.LOCAL and export.get(seam.DIGEST_VAR) and (opts.volume or "") == export[seam.VOLUME_VAR]:
        # the next new job or step with these options is pinned in C (spank/fastpath.c);
        # not when the volumes depend on where the command runs (relative sources)
        client = client or _client(cfg)
        submitplan.save(cfg, pinned_options(opts, opts.volume or ""), client.lookup_path(ref),
                        client.munge.socket, export)


def _client(cfg):
    from ..gwclient import GatewayClient   # only where a gateway is asked

    return GatewayClient(cfg.image_gateway, cfg.system, cfg.gateway_timeout,
                         ca_file=cfg.gateway_ca_file, default_type=cfg.default_image_type)


def pinned_options(opts, volume: str) -> str:
    """The options the pin depends on (seam.PINNED_OPTIONS) in the form spank/seam.c:
    seam_options_text builds, with `volume` as the job passes it on
    (seam.VOLUME_OPTION_VAR): an srun inside the job inherits that text."""
    return seam.PINNED_SEPARATOR.join(
        str(int(getattr(opts, name))) if name in seam.FLAGS
        else volume if name == "volume" else getattr(opts, name) or ""
        for name in seam.PINNED_OPTIONS)


def _submit_directory(cfg, modules) -> str:
    """Where the container shows the directory this command runs in (relative --volume
    sources): through the siteFs binds of the site and of `modules`.  The shell's
    $PWD is tried first, so a home reached through a symlink maps as the user sees it."""
    binds = cfg.site_fs + tuple(volume for module in modules for volume in module.site_fs)
    here = os.getcwd()
    candidates = [here]
    logical = os.environ.get("PWD", "")
    if logical.startswith("/") and logical != here:
        try:
            if os.path.samefile(logical, here):
                candidates.insert(0, logical)
        except OSError:
            pass        # a stale $PWD
    for directory in candidates:
        inside = volumes.container_path(directory, binds)
        if inside is not None:
            return inside
    shown = ", ".join(bind.source for bind in binds if bind.per_node_cache is None) or "nothing"
    raise ValueError(f"{here} is not on a file system the container shows (the site binds {shown})")


def _view(env) -> tuple[str, str, str] | None:
    """What a container shows, as a job's (or step's) environment pins it; None: no image."""
    if not env.get(seam.REQUEST_VAR):
        return None
    return env.get(seam.DIGEST_VAR, ""), env.get(seam.VOLUME_VAR, ""), env.get(seam.MODULE_VAR, "")


def _inherited_pin(request: str, new_job: bool) -> dict[str, str] | None:
    """Inside a job that pinned this same request, reuse its pin.

    A step of a job that was held for its pull knows no digest (its
    environment was made at submit): it pins nothing and runs in the job's
    container, whatever the pull gave.
    """
    if not os.environ.get(seam.JOB_ID_VAR) or os.environ.get(seam.REQUEST_VAR) != request:
        return None
    if all(os.environ.get(name) for name in PINNED):
        return {name: os.environ[name] for name in PINNED}
    if not new_job and os.environ.get(pullhold.PENDING_VAR) == request:
        return _pending(request)
    return None


def _pinned(ref: imageref.ImageRef, image_id: str) -> dict[str, str]:
    return {seam.REQUEST_VAR: str(ref), seam.IMAGE_VAR: image_id, seam.IMAGE_TYPE_VAR: "id",
            seam.DIGEST_VAR: f"{seam.DIGEST_PREFIX}{image_id}"}


def _pinned_local(cfg, ref: imageref.ImageRef) -> dict[str, str]:
    """A directory tree of the nodes as the image: where the site allows it, and a
    tree the user can read (checked here, as the user, and again on every node)."""
    if not cfg.allow_local_chroot:
        raise ImageRefError(f"{ref}: local images are not enabled on {cfg.system} (udiRoot.conf"
                            " allowLocalChroot); pull an image instead")
    if not os.path.isdir(ref.repository) or not os.access(ref.repository, os.R_OK | os.X_OK):
        raise ImageNotFound(f"{ref}: {ref.repository} is not a directory you can read here")
    return {**_pinned(ref, ref.image_id), seam.IMAGE_TYPE_VAR: imageref.LOCAL}


def _pending(request: str) -> dict[str, str]:
    """No pin yet: the releaser pins the job once its image is pulled."""
    return {seam.REQUEST_VAR: request, seam.IMAGE_VAR: "", seam.IMAGE_TYPE_VAR: "id",
            seam.DIGEST_VAR: "", pullhold.PENDING_VAR: request}


def _resolve(cfg, client, ref: imageref.ImageRef, *, new_job: bool) -> dict[str, str]:
    """The pin for `ref`; for an image not pulled yet, start the pull (see the module doc).

    An `id:` image is looked up too: the gateway says now, rather than every
    node later, when it does not exist or the user may not use it.
    """
    try:
        return _pinned(ref, client.lookup(ref)["id"])
    except ImageNotFound:
        if ref.type != "docker":
            raise
    record = _pull(client, ref, cfg.pull_wait_at_submit)
    if record.get("status") == "READY":
        return _pinned(ref, record["id"])
    if record.get("status") == "FAILURE":
        raise ImageNotFound(f"{ref} cannot be pulled: {record.get('status_message') or 'the pull failed'}")
    state = pullhold.progress(record)
    if not (cfg.hold_jobs_for_pull and new_job):
        raise ImageNotFound(f"{ref} is not ready on {cfg.system} yet: the gateway is pulling it ({state});"
                            f" submit again once `shifterimg lookup {ref}` finds it")
    log_info(f"shifter: the gateway is pulling {ref} ({state}); the job is queued held"
             " and starts once the image is ready")
    return _pending(str(ref))


def _pull(client, ref: imageref.ImageRef, wait: float) -> dict:
    """Ask for the pull (with the user's registry logins), then poll it for up to `wait` s."""
    deadline = time.monotonic() + wait
    record = client.pull(ref)
    while record.get("status") not in ("READY", "FAILURE") and not pullhold.found_in_registry(record):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(POLL_INTERVAL, remaining))
        record = client.pull_status(ref)
    return record
