/*
 * hardening: worker resource limits and identity (see hardening.h).
 */
#define _GNU_SOURCE
#include "hardening.h"

#include "log.h"

#include <errno.h>
#include <grp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#define MIB (1024ULL * 1024ULL)

/* ---- host side ---- */

void hardening_from_config(const kh_pipeline *cfg, kh_hardening *h) {
    memset(h, 0, sizeof *h);
    h->as_bytes = (unsigned long long)cfg->rlimit_as_mb * MIB;
    h->nofile = (unsigned long long)cfg->rlimit_nofile;
    h->cpu_s = (unsigned long long)cfg->rlimit_cpu_s;
    h->uid = cfg->user ? cfg->run_as_uid : -1;
    h->gid = cfg->run_as_gid;
}

static void add_opt(kh_hardening_args *out, const char *name,
                    unsigned long long v) {
    int slot = out->argc / 2;
    snprintf(out->num[slot], sizeof out->num[slot], "%llu", v);
    out->argv[out->argc++] = (char *)name;
    out->argv[out->argc++] = out->num[slot];
    out->argv[out->argc] = NULL;
}

void hardening_worker_args(const kh_hardening *h, kh_hardening_args *out) {
    memset(out, 0, sizeof *out);
    if (h->as_bytes)
        add_opt(out, "--rlimit-as", h->as_bytes);
    if (h->nofile)
        add_opt(out, "--rlimit-nofile", h->nofile);
    if (h->cpu_s)
        add_opt(out, "--rlimit-cpu", h->cpu_s);
    if (h->uid >= 0)
        add_opt(out, "--uid", (unsigned long long)h->uid);
    if (h->gid >= 0)
        add_opt(out, "--gid", (unsigned long long)h->gid);
}

int hardening_check_identity(const kh_pipeline *cfg, uid_t euid, gid_t egid,
                             char *err, size_t errlen) {
    if (euid == 0)
        return 0;
    if (cfg->user && (uid_t)cfg->run_as_uid != euid) {
        snprintf(err, errlen,
                 "user = %s (uid %ld) needs khost to run as root, but it "
                 "runs as uid %u",
                 cfg->user, cfg->run_as_uid, (unsigned)euid);
        return -1;
    }
    if (cfg->run_as_gid >= 0 && (gid_t)cfg->run_as_gid != egid) {
        snprintf(err, errlen,
                 "%s = %s (gid %ld) needs khost to run as root, but it runs "
                 "as gid %u",
                 cfg->user_group ? "user_group" : "user",
                 cfg->user_group ? cfg->user_group : cfg->user, cfg->run_as_gid,
                 (unsigned)egid);
        return -1;
    }
    return 0;
}

static int add_mode_bits(const char *path, mode_t bits, char *err,
                         size_t errlen) {
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    if ((st.st_mode & bits) == bits || st.st_uid != geteuid())
        return 0;
    /* Never group/other write: the snapshot must stay what was checked. */
    mode_t mode = ((st.st_mode & 07777) | bits) & ~(mode_t)(S_IWGRP | S_IWOTH);
    if (chmod(path, mode) != 0) {
        snprintf(err, errlen, "cannot chmod %04o %s: %s", (unsigned)mode, path,
                 strerror(errno));
        return -1;
    }
    return 0;
}

int hardening_share_snapshot(const char *path, char *err, size_t errlen) {
    const char *slash = strrchr(path, '/');
    if (slash && slash != path) {
        char *dir = strndup(path, (size_t)(slash - path));
        if (!dir) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        int rc = add_mode_bits(dir, S_IXUSR | S_IXGRP | S_IXOTH, err, errlen);
        free(dir);
        if (rc != 0)
            return -1;
    }
    return add_mode_bits(path, S_IRUSR | S_IRGRP | S_IROTH, err, errlen);
}

void hardening_describe_limits(const kh_pipeline *cfg, char *buf, size_t len) {
    if (!len)
        return;
    buf[0] = '\0';
    size_t used = 0;
    const struct {
        const char *name;
        int value;
    } lim[] = {
        {"rlimit_as_mb", cfg->rlimit_as_mb},
        {"rlimit_nofile", cfg->rlimit_nofile},
        {"rlimit_cpu_s", cfg->rlimit_cpu_s},
    };
    for (size_t i = 0; i < sizeof lim / sizeof lim[0]; i++) {
        if (!lim[i].value)
            continue;
        int n = snprintf(buf + used, len - used, "%s%s=%d", used ? " " : "",
                         lim[i].name, lim[i].value);
        if (n < 0 || (size_t)n >= len - used)
            break;
        used += (size_t)n;
    }
}

/* ---- worker side ---- */

/* Strict decimal, 1..max. */
static bool parse_count(const char *s, unsigned long long max,
                        unsigned long long *out) {
    if (!s || *s < '0' || *s > '9')
        return false;
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v == 0 || v > max)
        return false;
    *out = v;
    return true;
}

int hardening_parse_arg(kh_hardening *h, int argc, char **argv, int *i,
                        const char **why) {
    static const struct {
        const char *name;
        unsigned long long max;
        const char *why;
    } opts[] = {
        {"--rlimit-as", 1ULL << 50, "--rlimit-as needs a size in bytes"},
        {"--rlimit-nofile", 1ULL << 30, "--rlimit-nofile needs a count"},
        {"--rlimit-cpu", 1ULL << 40, "--rlimit-cpu needs seconds"},
        {"--uid", 0xfffffffeULL, "--uid needs a user id"},
        {"--gid", 0xfffffffeULL, "--gid needs a group id"},
    };
    const char *arg = argv[*i];
    for (size_t k = 0; k < sizeof opts / sizeof opts[0]; k++) {
        if (strcmp(arg, opts[k].name) != 0)
            continue;
        unsigned long long v = 0;
        const char *val = *i + 1 < argc ? argv[*i + 1] : NULL;
        /* uid/gid 0 (root) is a valid target; limits of 0 are not sent. */
        bool ok = k >= 3 && val && !strcmp(val, "0")
                      ? true
                      : parse_count(val, opts[k].max, &v);
        if (!ok) {
            *why = opts[k].why;
            return -1;
        }
        switch (k) {
        case 0:
            h->as_bytes = v;
            break;
        case 1:
            h->nofile = v;
            break;
        case 2:
            h->cpu_s = v;
            break;
        case 3:
            h->uid = (long)v;
            break;
        default:
            h->gid = (long)v;
            break;
        }
        *i += 1;
        return 1;
    }
    return 0;
}

/* Sets a limit to soft/hard. The hard limit is not raised further than
 * needed: when the inherited one already covers soft, it is only lowered.
 * Raising it (soft above the inherited hard limit) needs root. */
static int set_limit(int resource, const char *name, rlim_t soft, rlim_t hard,
                     char *err, size_t errlen) {
    struct rlimit cur;
    if (getrlimit(resource, &cur) == 0 && cur.rlim_max != RLIM_INFINITY &&
        cur.rlim_max < hard && cur.rlim_max >= soft)
        hard = cur.rlim_max;
    struct rlimit rl = {.rlim_cur = soft, .rlim_max = hard};
    if (setrlimit(resource, &rl) != 0) {
        int e = errno;
        char inherited[64] = "";
        if (getrlimit(resource, &cur) == 0 && cur.rlim_max != RLIM_INFINITY)
            snprintf(inherited, sizeof inherited,
                     " (the inherited hard limit is %llu)",
                     (unsigned long long)cur.rlim_max);
        snprintf(err, errlen, "cannot set %s to %llu: %s%s", name,
                 (unsigned long long)soft, strerror(e), inherited);
        return -1;
    }
    return 0;
}

/* Virtual memory the process maps already, 0 when unknown. */
static unsigned long long mapped_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "re");
    if (!f)
        return 0;
    unsigned long long pages = 0;
    if (fscanf(f, "%llu", &pages) != 1)
        pages = 0;
    fclose(f);
    long page = sysconf(_SC_PAGESIZE);
    return pages * (unsigned long long)(page > 0 ? page : 4096);
}

static int apply_limits(const kh_hardening *h, char *err, size_t errlen) {
    if (h->nofile && set_limit(RLIMIT_NOFILE, "RLIMIT_NOFILE", h->nofile,
                               h->nofile, err, errlen) != 0)
        return -1;
    /* SIGXCPU at the soft limit names the cause in the crash log; the
     * hard limit a second later (SIGKILL) catches a plugin ignoring it. */
    if (h->cpu_s && set_limit(RLIMIT_CPU, "RLIMIT_CPU", h->cpu_s, h->cpu_s + 1,
                              err, errlen) != 0)
        return -1;
    if (h->as_bytes) {
        unsigned long long mapped = mapped_bytes();
        if (mapped > h->as_bytes)
            klog_warn("rlimit_as_mb=%llu is below the %llu MiB this worker "
                      "maps already: its allocations will fail",
                      h->as_bytes / MIB, mapped / MIB);
        if (set_limit(RLIMIT_AS, "RLIMIT_AS", h->as_bytes, h->as_bytes, err,
                      errlen) != 0)
            return -1;
    }
    return 0;
}

static int switch_identity(const kh_hardening *h, char *err, size_t errlen) {
    if (h->uid < 0 && h->gid < 0)
        return 0;
    if (geteuid() != 0) {
        /* Only a no-op "switch" to the ids we have is possible. */
        if ((h->uid >= 0 &&
             ((uid_t)h->uid != geteuid() || (uid_t)h->uid != getuid())) ||
            (h->gid >= 0 &&
             ((gid_t)h->gid != getegid() || (gid_t)h->gid != getgid()))) {
            snprintf(err, errlen,
                     "cannot switch to uid %ld gid %ld: khost is not "
                     "running as root (uid %u)",
                     h->uid, h->gid, (unsigned)geteuid());
            return -1;
        }
        return 0;
    }
    /* Order matters: supplementary groups and the gid can only be
     * changed while still root. */
    if (setgroups(0, NULL) != 0) {
        snprintf(err, errlen, "setgroups: %s", strerror(errno));
        return -1;
    }
    if (h->gid >= 0 &&
        setresgid((gid_t)h->gid, (gid_t)h->gid, (gid_t)h->gid) != 0) {
        snprintf(err, errlen, "cannot switch to gid %ld: %s", h->gid,
                 strerror(errno));
        return -1;
    }
    if (h->uid >= 0 &&
        setresuid((uid_t)h->uid, (uid_t)h->uid, (uid_t)h->uid) != 0) {
        snprintf(err, errlen, "cannot switch to uid %ld: %s", h->uid,
                 strerror(errno));
        return -1;
    }
    /* Trust, but verify: no id may be left behind, and root must be out
     * of reach for good. */
    uid_t ru = (uid_t)-1, eu = (uid_t)-1, su = (uid_t)-1;
    gid_t rg = (gid_t)-1, eg = (gid_t)-1, sg = (gid_t)-1;
    if (getresuid(&ru, &eu, &su) != 0 || getresgid(&rg, &eg, &sg) != 0 ||
        (h->uid >= 0 &&
         (ru != (uid_t)h->uid || eu != (uid_t)h->uid || su != (uid_t)h->uid)) ||
        (h->gid >= 0 &&
         (rg != (gid_t)h->gid || eg != (gid_t)h->gid || sg != (gid_t)h->gid)) ||
        getgroups(0, NULL) != 0 ||
        (h->uid > 0 && (setuid(0) == 0 || seteuid(0) == 0))) {
        snprintf(err, errlen,
                 "privileges were not dropped completely (uid %u/%u/%u gid "
                 "%u/%u/%u)",
                 (unsigned)ru, (unsigned)eu, (unsigned)su, (unsigned)rg,
                 (unsigned)eg, (unsigned)sg);
        return -1;
    }
    return 0;
}

int hardening_apply(const kh_hardening *h, long host_pid, char *err,
                    size_t errlen) {
    if (apply_limits(h, err, errlen) != 0)
        return -1;
    if (switch_identity(h, err, errlen) != 0)
        return -1;
    if (h->uid >= 0 || h->gid >= 0) {
        /* A change of credentials clears the parent-death signal. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if ((long)getppid() != host_pid)
            exit(1);
    }
    char limits[160] = "";
    int n = 0;
    if (h->as_bytes)
        n += snprintf(limits + n, sizeof limits - (size_t)n,
                      " rlimit_as_mb=%llu", h->as_bytes / MIB);
    if (h->nofile && n >= 0 && (size_t)n < sizeof limits)
        n += snprintf(limits + n, sizeof limits - (size_t)n,
                      " rlimit_nofile=%llu", h->nofile);
    if (h->cpu_s && n >= 0 && (size_t)n < sizeof limits)
        n += snprintf(limits + n, sizeof limits - (size_t)n,
                      " rlimit_cpu_s=%llu", h->cpu_s);
    klog_debug("limits:%s; running as uid=%u gid=%u",
               limits[0] ? limits : " none set", (unsigned)geteuid(),
               (unsigned)getegid());
    return 0;
}
