/*
 * worker_proc: one worker process started the production way (see
 * worker_proc.h): channel, status page, hardening options, posix_spawn of
 * `khost worker`, and the INIT frame.
 */
#define _GNU_SOURCE
#include "worker_proc.h"
#include "hardening.h"
#include "log.h"
#include "plugin_loader.h"
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* Limits and identity of the worker (hardening.h): checked here, applied
 * by the worker itself before it loads the plugin. Returns the worker
 * options in args, or -1 when such a worker cannot start in this process
 * at all. */
static int prepare_hardening(const kh_pipeline *cfg, int index,
                             const char *plugin_path, kh_hardening_args *args,
                             char *err, size_t len) {
    if (hardening_check_identity(cfg, geteuid(), getegid(), err, len) != 0)
        return -1;
    kh_hardening h;
    hardening_from_config(cfg, &h);
    hardening_worker_args(&h, args);
    /* The snapshot is private to the host's user; a worker running as
     * another one must be able to read it (never to write it). */
    char why[512];
    if (h.uid >= 0 && (uid_t)h.uid != geteuid() && plugin_path &&
        hardening_share_snapshot(plugin_path, why, sizeof why) != 0)
        klog_warn("pipeline=%s worker=%d: plugin snapshot may be unreadable "
                  "for user %s: %s",
                  cfg->name, index, cfg->user, why);
    return 0;
}

int worker_proc_spawn(const kh_pipeline *cfg, int index,
                      const char *plugin_path, kh_worker_proc *p,
                      bool *permanent, char *err, size_t len) {
    kh_hardening_args hargs;
    *permanent = false;
    memset(p, 0, sizeof *p);
    p->fd = -1;
    p->out_fd = -1;
    if (prepare_hardening(cfg, index, plugin_path, &hargs, err, len) != 0) {
        *permanent = true;
        return -1;
    }
    int sv[2] = {-1, -1}, out[2] = {-1, -1};
    int memfd = -1;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    bool fa_ok = false, attr_ok = false;

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        goto error;
    /* Larger socket buffers let a whole batch sit in the kernel. */
    int sz = 4 << 20;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
    /* Only the host's end is nonblocking: a plugin that prints faster
     * than the host reads waits (the host always reads, and drops what
     * is over the rate limit). */
    if (pipe2(out, O_CLOEXEC) != 0 ||
        fcntl(out[0], F_SETFL, fcntl(out[0], F_GETFL) | O_NONBLOCK) != 0)
        goto error;
    /* The status page, then the message ring (transport.h). Sealed at
     * its size: a worker that could shrink it would make the host's next
     * access to its mapping a SIGBUS. */
    memfd =
        memfd_create("khost-worker-status", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (memfd < 0 || ftruncate(memfd, KH_STATUS_MAP) != 0 ||
        fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) !=
            0)
        goto error;
    p->status =
        mmap(NULL, KH_STATUS_MAP, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (p->status == MAP_FAILED) {
        p->status = NULL;
        goto error;
    }
    p->ring = (uint8_t *)p->status + KH_RING_OFFSET;

    posix_spawn_file_actions_init(&fa);
    fa_ok = true;
    posix_spawn_file_actions_adddup2(&fa, sv[1], KH_WORKER_CHANNEL_FD);
    posix_spawn_file_actions_adddup2(&fa, memfd, KH_WORKER_STATUS_FD);
    posix_spawn_file_actions_adddup2(&fa, out[1], KH_WORKER_OUTPUT_FD);
    kh_spawnattr_init_clean(&attr);
    attr_ok = true;

    char host_pid[32], tag[160], out_fd_arg[16];
    snprintf(out_fd_arg, sizeof out_fd_arg, "%d", KH_WORKER_OUTPUT_FD);
    snprintf(host_pid, sizeof host_pid, "%d", (int)getpid());
    snprintf(tag, sizeof tag, "worker %s/%d", cfg->name, index);
    /* "-v" lets the worker's own debug lines through, as the host's.
     * argv[0] names the process in ps until it sets its own title. */
    char *argv[10 + KH_HARDENING_MAX_ARGS] = {"khost-worker"};
    int argc = 1;
    if (klog_level() >= KLOG_DEBUG)
        argv[argc++] = "-v";
    argv[argc++] = "worker";
    argv[argc++] = "--host-pid";
    argv[argc++] = host_pid;
    argv[argc++] = "--tag";
    argv[argc++] = tag;
    argv[argc++] = "--output-fd";
    argv[argc++] = out_fd_arg;
    for (int i = 0; i < hargs.argc; i++)
        argv[argc++] = hargs.argv[i];
    argv[argc] = NULL;
    /* The small khost-worker executable when there is one (no Kafka
     * libraries: a smaller, faster-starting worker), else khost itself;
     * both take the same arguments. */
    const char *exe = kh_worker_exe();
    int rc = posix_spawn(&p->pid, exe ? exe : kh_self_exe(), &fa, &attr, argv,
                         environ);
    if (rc != 0) {
        errno = rc;
        goto error;
    }
    close(sv[1]);
    close(out[1]);
    close(memfd);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    p->fd = sv[0];
    p->out_fd = out[0];
    return 0;

error:
    snprintf(err, len, "%s", strerror(errno));
    if (fa_ok)
        posix_spawn_file_actions_destroy(&fa);
    if (attr_ok)
        posix_spawnattr_destroy(&attr);
    for (int i = 0; i < 2; i++) {
        if (sv[i] >= 0)
            close(sv[i]);
        if (out[i] >= 0)
            close(out[i]);
    }
    if (memfd >= 0)
        close(memfd);
    worker_proc_unmap(p->status);
    p->status = NULL;
    p->pid = 0;
    return -1;
}

void worker_proc_put_init(kh_buf *b, const kh_pipeline *cfg, int index,
                          const char *plugin_path) {
    size_t start = tr_frame_begin(b, KH_F_INIT);
    tr_put_str(b, cfg->name);
    tr_put_u32(b, (uint32_t)index);
    tr_put_str(b, plugin_path);
    tr_put_u32(b, (uint32_t)cfg->tick_interval_ms);
    tr_put_u32(b, (uint32_t)cfg->n_config);
    for (size_t i = 0; i < cfg->n_config; i++) {
        tr_put_str(b, cfg->config[i].key);
        tr_put_str(b, cfg->config[i].value);
    }
    tr_frame_end(b, start);
}

void worker_proc_unmap(kh_worker_status *s) {
    if (s)
        munmap(s, KH_STATUS_MAP);
}

void worker_proc_describe_exit(const siginfo_t *si, char *buf, size_t len) {
    if (si->si_code == CLD_EXITED)
        snprintf(buf, len, "exited with status %d", si->si_status);
    else
        /* sigabbrev_np gives "SEGV"; operators grep for "SIGSEGV". */
        snprintf(buf, len, "killed by SIG%s%s",
                 sigabbrev_np(si->si_status) ? sigabbrev_np(si->si_status)
                                             : "?",
                 si->si_code == CLD_DUMPED ? " (core dumped)" : "");
}
