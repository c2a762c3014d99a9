--[[
shifter-py: hold jobs whose image the gateway is still pulling.

Needed only with holdJobsForPull=1 in udiRoot.conf (docs/submit-and-pinning.md).
slurmctld loads it with `JobSubmitPlugins=lua` from the directory of
slurm.conf, as job_submit.lua.  A site that has a job_submit.lua already
copies the `shifter` table below into it and calls shifter.submit() and
shifter.modify() from its own slurm_job_submit() and slurm_job_modify().

When the submitting shifter plugin could not pin the job's image because the
gateway is still pulling it, it sets SHIFTER_IMAGE_PENDING=<image> in the
job's SPANK environment.  Such a job is queued held (Reason=JobHeldAdmin)
with AdminComment "shifter: waiting for <image> to be pulled"; the shifter
releaser (shifter-admin release-held-jobs) pins it by appending
"shifter-pin=sha256:<digest>" to its Comment once the image is READY, then
releases it, or cancels it with the pull's reason in AdminComment.  The
prolog reads the pin from the comment, so this file also refuses:
  * releasing a waiting job that carries no pin (it would start unpinned
    and its prolog would fail);
  * a user's comment that adds, changes or drops a pin.
The strings here must match shifter_core/pullhold.py.
--]]

local shifter = {
    PENDING_VAR = "SHIFTER_IMAGE_PENDING=",
    WAITING_PREFIX = "shifter: waiting for ",
    WAITING_SUFFIX = " to be pulled",
    PIN = "shifter%-pin=sha256:%x+",
    MAX_REQUEST = 600,
    -- scontrol prints the error code's text, not log_user's message, for refused updates
    JOB_HELD = slurm.ESLURM_JOB_HELD or 2042,            -- "Job is in held state, pending scheduler release"
    ACCESS_DENIED = slurm.ESLURM_ACCESS_DENIED or 2002,  -- "Access/permission denied"
}

local function starts_with(text, prefix)
    return text ~= nil and string.sub(text, 1, #prefix) == prefix
end

-- Every pin token of a comment, in order, as one string (empty: none).
local function pins(comment)
    local found = {}
    for token in string.gmatch(comment or "", shifter.PIN) do
        table.insert(found, token)
    end
    return table.concat(found, " ")
end

-- The image a job waits for, from its SPANK environment; nil if it is pinned.
function shifter.pending_request(job_desc)
    local env = job_desc.spank_job_env
    if env == nil then
        return nil
    end
    for _, entry in pairs(env) do
        if starts_with(entry, shifter.PENDING_VAR) then
            local request = string.sub(entry, #shifter.PENDING_VAR + 1)
            if request ~= "" then
                return request
            end
        end
    end
    return nil
end

function shifter.submit(job_desc, submit_uid)
    if pins(job_desc.comment) ~= "" then
        slurm.log_user("shifter: the job's comment may not contain a shifter-pin= token")
        return slurm.ERROR
    end
    local request = shifter.pending_request(job_desc)
    if request == nil then
        return slurm.SUCCESS
    end
    if #request > shifter.MAX_REQUEST or not string.match(request, "^[%w._:/@+-]+$") then
        slurm.log_user("shifter: %s is not an image this cluster can wait for", request)
        return slurm.ERROR
    end
    job_desc.priority = 0
    job_desc.admin_comment = shifter.WAITING_PREFIX .. request .. shifter.WAITING_SUFFIX
    return slurm.SUCCESS
end

function shifter.modify(job_desc, job_rec, modify_uid)
    local waiting = starts_with(job_rec.admin_comment, shifter.WAITING_PREFIX)
    local current = pins(job_rec.comment)
    local releasing = job_desc.priority ~= nil and job_desc.priority ~= slurm.NO_VAL
        and job_desc.priority ~= 0
    if waiting and current == "" and releasing then
        slurm.log_user("shifter: job %d waits until its image is pulled; it is released then"
                       .. " (scontrol show job %d: AdminComment)", job_rec.job_id, job_rec.job_id)
        return shifter.JOB_HELD
    end
    if job_desc.comment ~= nil and modify_uid ~= 0 and pins(job_desc.comment) ~= current then
        slurm.log_user("shifter: the shifter-pin= token of job %d's comment is set by shifter only",
                       job_rec.job_id)
        return shifter.ACCESS_DENIED
    end
    return slurm.SUCCESS
end

function slurm_job_submit(job_desc, part_list, submit_uid)
    return shifter.submit(job_desc, submit_uid)
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
    return shifter.modify(job_desc, job_rec, modify_uid)
end

slurm.log_info("shifter: job_submit.lua loaded")
return slurm.SUCCESS
