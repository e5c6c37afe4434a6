/*
 * plugin_loader: dlopen a plugin and check it against the host's ABI.
 *
 * The checks run from the cheapest to the most specific so the message
 * names the first thing that is really wrong: the file, the ELF header,
 * the entry point, the ABI version, the descriptor size, the callbacks.
 * Each message has the form "PATH: what is wrong (expected ...)".
 *
 * The host's own checks probe instead: plugin_probe_all spawns our own
 * executable as `khost probe-plugin` for each plugin, which runs
 * plugin_load there and answers with one line on a pipe. An ELF
 * constructor then runs in that child, and a crash or a hang in it (the
 * child is SIGKILLed after a bound) becomes one error line.
 */
#define _GNU_SOURCE
#include "plugin_loader.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define KHOST_ABI_STRING_(a, b) #a "." #b
#define KHOST_ABI_STRING(a, b) KHOST_ABI_STRING_(a, b)
#define HOST_ABI KHOST_ABI_STRING(KHOST_ABI_MAJOR, KHOST_ABI_MINOR)

/* dlopen's own message for a non-ELF file is "invalid ELF header" at best
 * and "file too short" at worst; look at the magic ourselves first. */
static int check_file(const char *path, char *err, size_t errlen) {
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(err, errlen, "%s: %s (expected a khost plugin .so file)", path,
                 strerror(errno));
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen,
                 "%s: not a regular file (expected a khost plugin .so file)",
                 path);
        return -1;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    unsigned char magic[4] = {0};
    ssize_t n = read(fd, magic, sizeof magic);
    close(fd);
    if (n != 4 || memcmp(magic, "\177ELF", 4) != 0) {
        snprintf(err, errlen,
                 "%s: not a shared object: no ELF header (expected a .so "
                 "built against include/khost/plugin.h)",
                 path);
        return -1;
    }
    return 0;
}

static int check_descriptor(const char *path, const khost_plugin_descriptor *d,
                            char *err, size_t errlen) {
    if (!d) {
        snprintf(err, errlen,
                 "%s: " KHOST_PLUGIN_ENTRY_NAME "() returned NULL (expected a "
                 "pointer to a khost_plugin_descriptor)",
                 path);
        return -1;
    }
    if (d->abi_major != KHOST_ABI_MAJOR) {
        snprintf(err, errlen,
                 "%s: plugin ABI major %u is not supported (this host speaks "
                 "ABI " HOST_ABI "; expected major %d: rebuild the plugin "
                 "against this khost's include/khost/plugin.h)",
                 path, d->abi_major, KHOST_ABI_MAJOR);
        return -1;
    }
    if (d->abi_minor > KHOST_ABI_MINOR) {
        snprintf(err, errlen,
                 "%s: plugin ABI %u.%u is newer than this host's " HOST_ABI
                 " (expected minor <= %d: upgrade khost or build the plugin "
                 "against an older header)",
                 path, d->abi_major, d->abi_minor, KHOST_ABI_MINOR);
        return -1;
    }
    if (d->struct_size < KHOST_DESCRIPTOR_MIN_SIZE) {
        snprintf(err, errlen,
                 "%s: descriptor too small: struct_size is %u bytes (expected "
                 "at least %zu, the size up to 'terminate' in ABI 1.0)",
                 path, d->struct_size, (size_t)KHOST_DESCRIPTOR_MIN_SIZE);
        return -1;
    }
    const char *missing = !d->init        ? "init"
                          : !d->handle    ? "handle"
                          : !d->terminate ? "terminate"
                                          : NULL;
    if (missing) {
        snprintf(err, errlen,
                 "%s: required callback '%s' is NULL (expected init, handle "
                 "and terminate to be set)",
                 path, missing);
        return -1;
    }
    if (!d->name || !d->name[0]) {
        snprintf(err, errlen,
                 "%s: descriptor has no name (expected a short identifier)",
                 path);
        return -1;
    }
    return 0;
}

int plugin_load(const char *path, kh_plugin *plugin, char *err, size_t errlen) {
    memset(plugin, 0, sizeof *plugin);
    if (check_file(path, err, errlen) != 0)
        return -1;

    /* A bare file name would make dlopen search the library path; a
     * plugin path always means that file. */
    char *open_path = NULL;
    if (strchr(path, '/'))
        open_path = strdup(path);
    else if (asprintf(&open_path, "./%s", path) < 0)
        open_path = NULL;
    if (!open_path) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    void *dl = dlopen(open_path, RTLD_NOW | RTLD_LOCAL);
    free(open_path);
    if (!dl) {
        snprintf(err, errlen, "%s: cannot be loaded: %s", path, dlerror());
        return -1;
    }
    khost_plugin_entry_fn entry;
    /* POSIX's sanctioned way to turn dlsym's void * into a function. */
    *(void **)&entry = dlsym(dl, KHOST_PLUGIN_ENTRY_NAME);
    if (!entry) {
        snprintf(err, errlen,
                 "%s: no entry point '" KHOST_PLUGIN_ENTRY_NAME
                 "' (expected a function exported with KHOST_PLUGIN_EXPORT)",
                 path);
        dlclose(dl);
        return -1;
    }
    const khost_plugin_descriptor *desc = entry();
    if (check_descriptor(path, desc, err, errlen) != 0) {
        dlclose(dl);
        return -1;
    }
    plugin->path = strdup(path);
    plugin->dl = dl;
    plugin->desc = desc;
    return 0;
}

int plugin_init(kh_plugin *plugin, const khost_init_args *args, void **state,
                char *err, size_t errlen) {
    if (args->errbuf && args->errbuf_size)
        args->errbuf[0] = '\0';
    *state = NULL;
    int rc = plugin->desc->init(args, state);
    if (rc == 0)
        return 0;
    const char *why = args->errbuf && args->errbuf[0]
                          ? args->errbuf
                          : "(the plugin gave no reason)";
    snprintf(err, errlen, "%s: init failed (returned %d): %s", plugin->path, rc,
             why);
    return -1;
}

char *plugin_snapshot(const char *path, const char *dir, char *err,
                      size_t errlen) {
    static unsigned serial;
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    char *out = NULL;
    if (asprintf(&out, "%s/%u-%s", dir, ++serial, base) < 0) {
        snprintf(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    int in = open(path, O_RDONLY | O_CLOEXEC);
    int fd =
        in < 0 ? -1 : open(out, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0500);
    if (in < 0 || fd < 0) {
        snprintf(err, errlen, "%s: cannot snapshot to %s: %s", path, out,
                 strerror(errno));
        goto fail;
    }
    /* Readable by a worker running as another user, writable by nobody:
     * chown to that user would let one worker change what others load.
     * fchmod, because the umask may have cut bits from open's mode. */
    fchmod(fd, 0555);
    char buf[65536];
    ssize_t n;
    while ((n = read(in, buf, sizeof buf)) > 0) {
        for (ssize_t done = 0; done < n;) {
            ssize_t w = write(fd, buf + done, (size_t)(n - done));
            if (w < 0) {
                snprintf(err, errlen, "%s: cannot write snapshot %s: %s", path,
                         out, strerror(errno));
                goto fail;
            }
            done += w;
        }
    }
    if (n < 0) {
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        goto fail;
    }
    close(in);
    close(fd);
    return out;
fail:
    if (in >= 0)
        close(in);
    if (fd >= 0) {
        close(fd);
        unlink(out);
    }
    free(out);
    return NULL;
}

/* ---- Probing in a child process ---------------------------------- */

/* The fd on which a probe child writes its one line. */
#define KH_PROBE_RESULT_FD 3
#define KH_SELF_EXE_MIN_FD 64
/* The longest a probe wait sleeps before looking at its children again:
 * a child's exit is seen by waitpid, not always by its pipe (a plugin may
 * fork, and the grandchild keep the pipe open). */
#define KH_PROBE_POLL_MS 10

static long long probe_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Our own executable, pinned by an fd opened once, so that replacing
 * khost on disk during an upgrade never pairs a host with a worker or a
 * probe of another version. Opening /proc/self/exe (rather than exec'ing
 * it) is also what valgrind translates to the real binary; exec'ing it
 * directly would start valgrind's own tool. */
const char *kh_self_exe(void) {
    static char path[64];
    if (!path[0]) {
        int fd = open("/proc/self/exe", O_PATH | O_CLOEXEC);
        /* Above every fd a child is given (a worker's channel is 3, its
         * status page 4, a probe's result 3): opened first thing, it would
         * get 3 itself, and a child's dup2 onto 3 would replace the very
         * file it is about to exec ("Exec format error"). */
        if (fd >= 0 && fd < KH_SELF_EXE_MIN_FD) {
            int high = fcntl(fd, F_DUPFD_CLOEXEC, KH_SELF_EXE_MIN_FD);
            close(fd);
            fd = high;
        }
        if (fd >= 0)
            snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        else
            snprintf(path, sizeof path, "/proc/self/exe");
    }
    return path;
}

void kh_spawnattr_init_clean(posix_spawnattr_t *attr) {
    posix_spawnattr_init(attr);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(attr, &none);
    posix_spawnattr_setsigdefault(attr, &all);
    posix_spawnattr_setflags(attr,
                             POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
}

/* Pin path by an O_PATH fd above every fd a child is given; the exec
 * path into out, or -1 when it is not an executable regular file. */
static int pin_exe(const char *path, char *out, size_t len) {
    int fd = open(path, O_PATH | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
        !(st.st_mode & S_IXUSR)) {
        close(fd);
        return -1;
    }
    if (fd < KH_SELF_EXE_MIN_FD) {
        int high = fcntl(fd, F_DUPFD_CLOEXEC, KH_SELF_EXE_MIN_FD);
        close(fd);
        fd = high;
    }
    if (fd < 0)
        return -1;
    snprintf(out, len, "/proc/self/fd/%d", fd);
    return 0;
}

const char *kh_worker_exe(void) {
    static char path[64];
    static bool looked;
    if (!looked) {
        looked = true;
        char self[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n > 0) {
            self[n] = '\0';
            char *slash = strrchr(self, '/');
            if (slash) {
                *slash = '\0';
                static const char *const rel[] = {
                    "/khost-worker", "/../libexec/khost/khost-worker"};
                for (size_t i = 0; i < 2; i++) {
                    char cand[PATH_MAX + 64];
                    snprintf(cand, sizeof cand, "%s%s", self, rel[i]);
                    if (pin_exe(cand, path, sizeof path) == 0)
                        break;
                }
            }
        }
    }
    return path[0] ? path : NULL;
}

/* Keep an answer on one line: control bytes (a newline in a plugin's
 * name, say) become '?'. */
static void one_line(char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = '?';
}

static void describe_timeout(char *buf, size_t len, int timeout_ms) {
    if (timeout_ms % 1000 == 0)
        snprintf(buf, len, "%d s", timeout_ms / 1000);
    else
        snprintf(buf, len, "%d ms", timeout_ms);
}

int plugin_probe_main(int argc, char **argv) {
    static const char usage[] =
        "usage: khost probe-plugin [--result-fd FD --host-pid PID] [--] "
        "FILE.so\n";
    int result_fd = -1;
    long host_pid = -1;
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        char *end = NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage, stdout);
            return 0;
        } else if ((!strcmp(a, "--result-fd") || !strcmp(a, "--host-pid")) &&
                   i + 1 < argc) {
            errno = 0;
            long v = strtol(argv[++i], &end, 10);
            if (errno || *end || end == argv[i] || v < 0 || v > 1 << 30) {
                fprintf(stderr, "khost probe-plugin: bad %s '%s'\n%s", a,
                        argv[i], usage);
                return 2;
            }
            if (!strcmp(a, "--result-fd"))
                result_fd = (int)v;
            else
                host_pid = v;
        } else if (!strcmp(a, "--") && i + 2 == argc) {
            path = argv[++i];
        } else if (a[0] != '-' && i + 1 == argc) {
            path = a;
        } else {
            fprintf(stderr, "%s", usage);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "%s", usage);
        return 2;
    }
    /* Die with the host that waits for us; if it is already gone, the
     * answer has no reader. */
    if (host_pid > 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if ((long)getppid() != host_pid)
            return 2;
    }
    kh_plugin plugin;
    char err[1024], line[1280];
    int rc;
    if (plugin_load(path, &plugin, err, sizeof err) != 0) {
        snprintf(line, sizeof line, "%s", err);
        rc = 2;
    } else {
        const khost_plugin_descriptor *d = plugin.desc;
        /* Formatted before the unload: the strings are the plugin's. Cut
         * to what kh_probe keeps, so that the ABI always fits the line. */
        snprintf(line, sizeof line, "%.127s %.127s (ABI %u.%u)", d->name,
                 d->version ? d->version : "-", d->abi_major, d->abi_minor);
        plugin_unload(&plugin);
        rc = 0;
    }
    one_line(line);
    if (result_fd < 0) {
        fprintf(rc == 0 ? stdout : stderr, "%s\n", line);
        return rc;
    }
    size_t len = strlen(line);
    line[len++] = '\n';
    for (size_t done = 0; done < len;) {
        ssize_t w = write(result_fd, line + done, len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return 2;
        done += (size_t)w;
    }
    close(result_fd);
    return rc;
}

/* A probe child as the parent sees it. */
typedef struct probe_run {
    pid_t pid;          /* 0 when not running (never started, or reaped) */
    int fd;             /* read end of its result pipe, -1 once closed */
    long long deadline; /* CLOCK_MONOTONIC ms after which it is killed */
    size_t len;
    char buf[1024]; /* its answer so far (as much as kh_probe.err holds) */
} probe_run;

static int probe_spawn(kh_probe *p, probe_run *r, int timeout_ms) {
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0) {
        snprintf(p->err, sizeof p->err,
                 "%s: cannot start a process to load it: %s", p->path,
                 strerror(errno));
        return -1;
    }
    fcntl(pipefd[0], F_SETFL, O_NONBLOCK);
    /* Above the fds the child is given, so that the dup2 below always
     * happens (a dup2 onto itself would keep FD_CLOEXEC). */
    int wfd = fcntl(pipefd[1], F_DUPFD_CLOEXEC, 10);
    close(pipefd[1]);
    if (wfd < 0) {
        snprintf(p->err, sizeof p->err,
                 "%s: cannot start a process to load it: %s", p->path,
                 strerror(errno));
        close(pipefd[0]);
        return -1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, wfd, KH_PROBE_RESULT_FD);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    kh_spawnattr_init_clean(&attr);
    char fd_arg[16], pid_arg[32];
    snprintf(fd_arg, sizeof fd_arg, "%d", KH_PROBE_RESULT_FD);
    snprintf(pid_arg, sizeof pid_arg, "%d", (int)getpid());
    char *argv[] = {"khost", "probe-plugin",  "--result-fd",
                    fd_arg,  "--host-pid",    pid_arg,
                    "--",    (char *)p->path, NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, kh_self_exe(), &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    close(wfd);
    if (rc != 0) {
        snprintf(p->err, sizeof p->err,
                 "%s: cannot start a process to load it: %s", p->path,
                 strerror(rc));
        close(pipefd[0]);
        return -1;
    }
    r->pid = pid;
    r->fd = pipefd[0];
    r->deadline = probe_now_ms() + timeout_ms;
    r->len = 0;
    return 0;
}

/* Read what the pipe holds now, keeping what fits; close it at EOF. */
static void probe_read(probe_run *r) {
    while (r->fd >= 0) {
        char chunk[512];
        ssize_t n = read(r->fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            close(r->fd);
            r->fd = -1;
            return;
        }
        size_t room = sizeof r->buf - 1 - r->len;
        size_t take = (size_t)n < room ? (size_t)n : room;
        memcpy(r->buf + r->len, chunk, take);
        r->len += take;
    }
}

/* "NAME VERSION (ABI M.m)", as plugin_probe_main prints it. */
static bool parse_ok_line(const char *line, kh_probe *p) {
    const char *abi = NULL;
    for (const char *s = line; (s = strstr(s, " (ABI ")); s++)
        abi = s;
    unsigned major, minor;
    char close_paren;
    if (!abi ||
        sscanf(abi, " (ABI %u.%u%c", &major, &minor, &close_paren) != 3 ||
        close_paren != ')')
        return false;
    const char *sp = memchr(line, ' ', (size_t)(abi - line));
    const char *name_end = sp ? sp : abi;
    if (name_end == line)
        return false;
    snprintf(p->name, sizeof p->name, "%.*s", (int)(name_end - line), line);
    if (sp)
        snprintf(p->version, sizeof p->version, "%.*s", (int)(abi - sp - 1),
                 sp + 1);
    else
        p->version[0] = '\0';
    p->abi_major = major;
    p->abi_minor = minor;
    return true;
}

/* The child exited (or was killed) with `status`: turn that and its line
 * into the probe's result. */
static void probe_finish(kh_probe *p, probe_run *r, int status) {
    /* What the pipe holds now; a grandchild may keep it open, so no more
     * is waited for. */
    probe_read(r);
    if (r->fd >= 0) {
        close(r->fd);
        r->fd = -1;
    }
    r->pid = 0;
    r->buf[r->len] = '\0';
    r->buf[strcspn(r->buf, "\n")] = '\0';
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        const char *abbrev = sigabbrev_np(sig);
        char name[32];
        if (abbrev)
            snprintf(name, sizeof name, "SIG%s", abbrev);
        else
            snprintf(name, sizeof name, "signal %d", sig);
        snprintf(p->err, sizeof p->err, "%s: plugin crashed while loading (%s)",
                 p->path, name);
    } else if (WEXITSTATUS(status) == 0 && parse_ok_line(r->buf, p)) {
        p->ok = true;
    } else if (WEXITSTATUS(status) != 0 && r->buf[0]) {
        /* plugin_load's own message, which starts with the path. */
        snprintf(p->err, sizeof p->err, "%s", r->buf);
    } else if (r->buf[0]) {
        snprintf(p->err, sizeof p->err,
                 "%s: the process loading it gave an unreadable answer: "
                 "%.200s",
                 p->path, r->buf);
    } else {
        snprintf(p->err, sizeof p->err,
                 "%s: the process loading it exited with status %d and "
                 "no answer (expected a khost plugin)",
                 p->path, WEXITSTATUS(status));
    }
}

void plugin_probe_all(kh_probe *probes, size_t n, int timeout_ms) {
    for (size_t i = 0; i < n; i++) {
        probes[i].ok = false;
        probes[i].err[0] = '\0';
    }
    if (!n)
        return;
    probe_run *runs = calloc(n, sizeof *runs);
    if (!runs) {
        for (size_t i = 0; i < n; i++)
            snprintf(probes[i].err, sizeof probes[i].err, "%s: out of memory",
                     probes[i].path);
        return;
    }
    /* An inherited SIGCHLD = SIG_IGN would make the kernel reap our
     * children, and their status would be lost; SIG_DFL ignores the
     * signal just as well. */
    struct sigaction sa;
    if (sigaction(SIGCHLD, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN) {
        sa.sa_handler = SIG_DFL;
        sigaction(SIGCHLD, &sa, NULL);
    }
    char bound[32];
    describe_timeout(bound, sizeof bound, timeout_ms);
    size_t next = 0, running = 0, finished = 0;
    while (finished < n) {
        while (running < KH_PROBE_PARALLEL && next < n) {
            runs[next].fd = -1;
            if (probe_spawn(&probes[next], &runs[next], timeout_ms) == 0)
                running++;
            else
                finished++;
            next++;
        }
        if (!running)
            continue;
        /* Sleep until a pipe has news, at most KH_PROBE_POLL_MS. */
        struct pollfd fds[KH_PROBE_PARALLEL];
        nfds_t nfds = 0;
        long long now = probe_now_ms();
        long long wait = KH_PROBE_POLL_MS;
        for (size_t i = 0; i < next; i++) {
            if (!runs[i].pid)
                continue;
            if (runs[i].fd >= 0 && nfds < KH_PROBE_PARALLEL)
                fds[nfds++] =
                    (struct pollfd){.fd = runs[i].fd, .events = POLLIN};
            if (runs[i].deadline - now < wait)
                wait = runs[i].deadline - now;
        }
        poll(fds, nfds, wait > 0 ? (int)wait : 0);
        now = probe_now_ms();
        for (size_t i = 0; i < next; i++) {
            probe_run *r = &runs[i];
            if (!r->pid)
                continue;
            probe_read(r);
            int status = 0;
            pid_t got = waitpid(r->pid, &status, WNOHANG);
            if (got == 0 && now < r->deadline)
                continue;
            if (got == 0) {
                /* By pid: unreaped, it cannot have been reused. */
                kill(r->pid, SIGKILL);
                while (waitpid(r->pid, &status, 0) < 0 && errno == EINTR)
                    continue;
                /* It may have exited on its own just before the kill. */
                bool killed =
                    WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
                probe_finish(&probes[i], r, status);
                if (killed) {
                    probes[i].ok = false;
                    snprintf(probes[i].err, sizeof probes[i].err,
                             "%s: did not finish loading within %s (the "
                             "process loading it was killed)",
                             probes[i].path, bound);
                }
            } else if (got < 0) {
                if (errno == EINTR)
                    continue;
                snprintf(probes[i].err, sizeof probes[i].err,
                         "%s: cannot wait for the process loading it: %s",
                         probes[i].path, strerror(errno));
                r->pid = 0;
                if (r->fd >= 0)
                    close(r->fd);
                r->fd = -1;
            } else {
                probe_finish(&probes[i], r, status);
            }
            running--;
            finished++;
        }
    }
    free(runs);
}

void plugin_check_all(const kh_config *cfg, kh_errors *errs) {
    size_t n = cfg->n_pipelines;
    kh_probe *probes = calloc(n ? n : 1, sizeof *probes);
    const kh_pipeline **of = calloc(n ? n : 1, sizeof *of);
    if (!probes || !of) {
        errors_add(errs, "%s: out of memory checking plugins", cfg->path);
        free(probes);
        free(of);
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!cfg->pipelines[i].plugin_path)
            continue;
        of[k] = &cfg->pipelines[i];
        probes[k++].path = cfg->pipelines[i].plugin_path;
    }
    plugin_probe_all(probes, k, KH_PROBE_TIMEOUT_MS);
    for (size_t i = 0; i < k; i++)
        if (!probes[i].ok)
            errors_add(errs, "%s:%d: plugin of [pipeline.%s]: %s%s%s%s",
                       cfg->path, of[i]->plugin_line, of[i]->name,
                       probes[i].err,
                       of[i]->plugin_tried ? " (also tried " : "",
                       of[i]->plugin_tried ? of[i]->plugin_tried : "",
                       of[i]->plugin_tried ? ")" : "");
    free(probes);
    free(of);
}

void plugin_unload(kh_plugin *plugin) {
    if (plugin->dl)
        dlclose(plugin->dl);
    free(plugin->path);
    memset(plugin, 0, sizeof *plugin);
}

void plugin_describe_optional(const kh_plugin *plugin, char *buf, size_t len) {
    const khost_plugin_descriptor *d = plugin->desc;
    struct {
        const char *name;
        int present;
    } opt[] = {
        {"handle_batch",
         KHOST_DESCRIPTOR_HAS(d, handle_batch) && d->handle_batch},
        {"on_assign", KHOST_DESCRIPTOR_HAS(d, on_assign) && d->on_assign},
        {"on_revoke", KHOST_DESCRIPTOR_HAS(d, on_revoke) && d->on_revoke},
        {"tick", KHOST_DESCRIPTOR_HAS(d, tick) && d->tick},
        {"get_extension",
         KHOST_DESCRIPTOR_HAS(d, get_extension) && d->get_extension},
    };
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof opt / sizeof opt[0]; i++) {
        if (!opt[i].present)
            continue;
        int n = snprintf(buf + used, len - used, "%s%s", used ? " " : "",
                         opt[i].name);
        if (n < 0 || (size_t)n >= len - used)
            break;
        used += (size_t)n;
    }
    if (!used)
        snprintf(buf, len, "none");
}
