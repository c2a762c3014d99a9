"""Submit side: sbatch and salloc (allocator context), srun (local context).

Before a job exists, check the options and pin the image: the gateway is asked
once, here, for the digest the tag points to now, and every node and step of
the job uses that digest (no gateway storm at job start, no tag drift).  A bad
option fails the submission with one line.

The pin travels two ways: in the job's environment (SHIFTER_* variables, seen
by the batch script, by the steps and by an srun started inside the job) and
as job-control variables, which the prolog and epilog see as SPANK_SHIFTER_*.
"""
from __future__ import annotations

import os

from .. import imageref, volumes
from ..errors import ShifterError
from ..gwclient import GatewayClient
from . import settings

PINNED = ("SHIFTER_IMAGEREQUEST", "SHIFTER_IMAGE", "SHIFTER_IMAGETYPE", "SHIFTER_IMAGE_DIGEST")


def init_post_opt(spank, opts) -> None:
    cfg = settings.site_config(spank)
    if not opts.image:
        given = [f"--{n}" for n in ("volume", "module", "autoshift", "ccm") if getattr(opts, n)]
        raise ShifterError(f"{', '.join(given)} needs --image")
    ref = imageref.parse(opts.image, cfg.default_image_type)
    mounts = volumes.parse(opts.volume or "", "user", cfg.cache_policy())
    modules = cfg.select_modules(opts.module)
    pin = _inherited_pin(str(ref)) or _resolve(cfg, ref)
    export = dict(pin)
    export["SHIFTER_VOLUME"] = volumes.render(mounts)
    export["SHIFTER_MODULE"] = ",".join(m.name for m in modules)
    export["SHIFTER_AUTOSHIFT"] = "1" if opts.autoshift else "0"
    export["SHIFTER_CCM"] = "1" if opts.ccm else "0"
    for name, value in export.items():
        os.environ[name] = value
        spank.job_control_setenv(name, value)


def _inherited_pin(request: str) -> dict[str, str] | None:
    """Inside a job that pinned this same request, reuse its pin."""
    if os.environ.get("SLURM_JOB_ID") and os.environ.get("SHIFTER_IMAGEREQUEST") == request \
            and all(os.environ.get(name) for name in PINNED):
        return {name: os.environ[name] for name in PINNED}
    return None


def _resolve(cfg, ref: imageref.ImageRef) -> dict[str, str]:
    if ref.type == "id":
        image_id = ref.image_id
    else:
        client = GatewayClient(cfg.image_gateway, cfg.system, cfg.gateway_timeout,
                               ca_file=cfg.gateway_ca_file, default_type=cfg.default_image_type)
        image_id = client.lookup(ref)["id"]
    return {"SHIFTER_IMAGEREQUEST": str(ref), "SHIFTER_IMAGE": image_id, "SHIFTER_IMAGETYPE": "id",
            "SHIFTER_IMAGE_DIGEST": f"sha256:{image_id}"}
