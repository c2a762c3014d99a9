/*
 * shifter-entrypoint: runs the image's ENTRYPOINT in front of a task's command
 * (--entrypoint; shifter_core/taskopts.py says why it takes this detour).
 *
 * Slurm 22.05 lets a SPANK plugin replace the elements of a task's argv
 * (S_JOB_ARGV) but not add any, so the plugin makes this program argv[0],
 * visible in the container at its own path, and hands it the entrypoint and
 * the command's own argv[0] in two variables of the task's environment.  It
 * runs as the user inside the container, already in its working directory and
 * environment, after every step of Slurm's task launch (TaskProlog, limits):
 * it only removes the two variables and execs
 *
 *     ENTRYPOINT... argv[0] argv[1]...
 *
 * looking the entrypoint's first word up in the task's PATH, as Docker does.
 * Static, so that it runs in any image, with or without a C library.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "seam.h"

int main(int argc, char **argv)
{
    const char *entry = getenv(SEAM_ENTRYPOINT_VAR), *argv0 = getenv(SEAM_ARGV0_VAR);
    char *words, **args;
    int n = 1, i = 0;

    if (entry == NULL || !*entry || argv0 == NULL || argc < 1) {
        fprintf(stderr, "shifter-entrypoint: the plugin starts me, with %s and %s set\n",
                SEAM_ENTRYPOINT_VAR, SEAM_ARGV0_VAR);
        return 127;
    }
    for (const char *p = entry; *p; p++)
        n += *p == '\n';
    words = strdup(entry);
    args = calloc(n + argc + 1, sizeof *args);
    if (words == NULL || args == NULL || (argv0 = strdup(argv0)) == NULL) {
        perror("shifter-entrypoint");
        return 127;
    }
    for (char *word = words, *end; word; word = end) {
        end = strchr(word, '\n');
        if (end)
            *end++ = '\0';
        if (seam_unescape(word) < 0) {
            fprintf(stderr, "shifter-entrypoint: %s is not the plugin's\n", SEAM_ENTRYPOINT_VAR);
            return 127;
        }
        args[i++] = word;
    }
    args[i++] = (char *) argv0;
    for (int k = 1; k < argc; k++)
        args[i++] = argv[k];
    unsetenv(SEAM_ENTRYPOINT_VAR);
    unsetenv(SEAM_ARGV0_VAR);
    execvp(args[0], args);
    fprintf(stderr, "shifter: cannot run the image's ENTRYPOINT %s: %s\n", args[0], strerror(errno));
    return errno == ENOENT ? 127 : 126;
}
