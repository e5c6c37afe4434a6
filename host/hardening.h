/*
 * hardening: what a worker process may use and whom it runs as.
 *
 * Per pipeline (config.h): rlimit_as_mb, rlimit_nofile, rlimit_cpu_s,
 * user and user_group. The host turns them into options of `khost worker`
 * (hardening_worker_args) and the worker applies them to itself right
 * after PR_SET_NO_NEW_PRIVS, before it reads INIT and so before any plugin
 * code is loaded (hardening_apply).
 *
 * Why the worker and not prlimit(2) from the host: posix_spawn cannot set
 * limits, and a prlimit after posix_spawn lands on a process that is
 * already running, at a point nobody chose (ld.so may be mapping
 * libraries). The identity switch has to happen in the worker anyway, and
 * limits set there are in force before the first plugin instruction with
 * no window at all. They are also visible in `ps` as worker arguments.
 */
#ifndef KHOST_HARDENING_H
#define KHOST_HARDENING_H

#include "config.h"

#include <stddef.h>
#include <sys/types.h>

typedef struct kh_hardening {
    unsigned long long as_bytes; /* RLIMIT_AS, 0: as inherited */
    unsigned long long nofile;   /* RLIMIT_NOFILE, 0: as inherited */
    unsigned long long cpu_s;    /* RLIMIT_CPU (soft), 0: as inherited */
    long uid;                    /* switch to this uid, -1: keep */
    long gid;                    /* switch to this gid, -1: keep */
} kh_hardening;

/* Options a worker is started with, and the strings they point into. */
#define KH_HARDENING_MAX_ARGS 10
typedef struct kh_hardening_args {
    char *argv[KH_HARDENING_MAX_ARGS + 1]; /* NULL-terminated */
    int argc;
    char num[KH_HARDENING_MAX_ARGS / 2][24];
} kh_hardening_args;

/* ---- host side ---- */

void hardening_from_config(const kh_pipeline *cfg, kh_hardening *h);

/* "--rlimit-as BYTES --uid N ..." for `khost worker`, only the options
 * that are set. */
void hardening_worker_args(const kh_hardening *h, kh_hardening_args *out);

/* Can a process with effective ids euid/egid start such a worker?
 * Switching uid or gid needs root; switching to the ids one already has
 * is a no-op and allowed. 0, or -1 with the reason in err. */
int hardening_check_identity(const kh_pipeline *cfg, uid_t euid, gid_t egid,
                             char *err, size_t errlen);

/* Make a plugin snapshot loadable by a worker running as another user:
 * the file gets read permission for everyone (never write) and its
 * folder search (x, not read) permission, so the random snapshot names
 * stay unlisted. Only touches what the calling user owns; a no-op when
 * the bits are there already. 0, or -1 with the reason in err. */
int hardening_share_snapshot(const char *path, char *err, size_t errlen);

/* "rlimit_as_mb=64 rlimit_nofile=256 rlimit_cpu_s=10", only the limits
 * set; "" when none. For log lines. */
void hardening_describe_limits(const kh_pipeline *cfg, char *buf, size_t len);

/* ---- worker side ---- */

/* Parses the option at argv[*i] if it is one of ours: returns 1 and
 * advances *i past its value, 0 when argv[*i] is not a hardening option,
 * -1 with *why set when its value is bad or missing. */
int hardening_parse_arg(kh_hardening *h, int argc, char **argv, int *i,
                        const char **why);

/* Applies h to the calling process: resource limits first (while still
 * privileged, so root may raise a hard limit), then setgroups(0, NULL),
 * setgid, setuid, checking that root cannot be regained. A change of
 * credentials clears the parent-death signal, so it is re-armed here and
 * the process exits at once if the host (host_pid) is already gone.
 * Returns 0, or -1 with the reason in err (the caller must not load any
 * plugin then). */
int hardening_apply(const kh_hardening *h, long host_pid, char *err,
                    size_t errlen);

#endif
