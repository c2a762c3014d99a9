/*
 * The fast path of the plugin (fastpath.c): steps that need no Python.
 */
#ifndef SHIFTER_FASTPATH_H
#define SHIFTER_FASTPATH_H

#include <stdint.h>
#include <sys/stat.h>

#include <slurm/spank.h>

/* Root-owned and writable by nobody else: what root may trust. */
static inline int fastpath_root_only(const struct stat *st)
{
    return st->st_uid == 0 && !(st->st_mode & (S_IWGRP | S_IWOTH));
}

#define FASTPATH_API __attribute__((visibility("hidden")))

/* srun: 1 if the job already pinned exactly these options (see fastpath.c). */
FASTPATH_API int fastpath_pin_reusable(const char *options);

/* slurmstepd: read this job's container record on this node. */
enum fastpath_record {
    RECORD_NONE = -1,       /* none, or not one this file can read: the Python path decides */
    RECORD_READY = 0,       /* a container the fast path can enter */
    RECORD_PYTHON = 1,      /* a container whose tasks need Python (CCM, module user hooks) */
    RECORD_FAILED = 2,      /* the prolog failed because of the job: fastpath_fail says why */
};
FASTPATH_API enum fastpath_record fastpath_load(spank_t sp, const char *config);

/* A task: join the container the record names, as enter.py does. */
FASTPATH_API int fastpath_enter(spank_t sp);

/* A task of a job whose prolog failed here: log the reason (once per node), fail. */
FASTPATH_API int fastpath_fail(spank_t sp);

#endif
