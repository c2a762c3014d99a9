/*
 * The fast path of the plugin (fastpath.c): steps that need no Python.
 */
#ifndef SHIFTER_FASTPATH_H
#define SHIFTER_FASTPATH_H

#include <slurm/spank.h>

#include "seam.h"

#define FASTPATH_API __attribute__((visibility("hidden")))

/* srun: 1 if the job already pinned exactly these options (see fastpath.c). */
FASTPATH_API int fastpath_pin_reusable(const char *options);

/* srun, sbatch, salloc of a new job, or srun of a step (`step` 1) inside a job: pin
 * it from the user's submit plan for these options and udiRoot.conf, asking the
 * gateway here (a step asking for its job's image reuses the job's pin); 0, or -1
 * for Python to do it. */
FASTPATH_API int fastpath_pin(spank_t sp, const char *config, const char *options, int step);

/* slurmstepd: read the container record on this node of this job (step < 0) or of
 * its step `step`'s own container; SEAM_INVALID when there is none or none this
 * file can read (the Python path decides then). */
FASTPATH_API enum seam_status fastpath_load(spank_t sp, const char *config, long long step);

/* prolog, epilog: have the node server (shifter_core/spank/nodeserver.py) run
 * req->callback (its job and uid are filled in here): its rc, or
 * FASTPATH_NOT_SERVED when there is no server or it asks the plugin to run
 * Python itself.  The reply's last error line goes to `last_error` too. */
#define FASTPATH_NOT_SERVED 1
FASTPATH_API int fastpath_serve(spank_t sp, const char *config, struct seam_request *req, char *last_error,
                                size_t size);

/* slurmstepd: the same for the step's step_prolog or step_epilog, with the step and
 * the step's variables of seam.STEP_SERVER_VARS filled in.  When step_prolog fails,
 * fastpath_fail shows its reason for the step's tasks. */
FASTPATH_API int fastpath_serve_step(spank_t sp, const char *config, struct seam_request *req);

/* A task: join the container the record names, as enter.py does; the task's own
 * value of the comma-separated variables in `keep_env` (--env, or NULL) wins. */
FASTPATH_API int fastpath_enter(spank_t sp, const char *keep_env);

/* The task, as the user just before exec: into --workdir (`workdir`, NULL if not
 * given) or by the default rule (taskopts.change_directory); 0 or -1. */
FASTPATH_API int fastpath_task_init(const char *workdir);

/* Has the job a step's own container on this node (container/holder.py)?  Its
 * epilog then runs even without a shifter option, to end it. */
FASTPATH_API int fastpath_has_step_containers(spank_t sp, const char *config);

/* Does the loaded record's container hold this digest? */
FASTPATH_API int fastpath_holds(const char *digest);

/* A task of a job whose prolog failed here, or of a step whose own container
 * could not be built: log the reason (once per node), fail. */
FASTPATH_API int fastpath_fail(spank_t sp);

#endif
