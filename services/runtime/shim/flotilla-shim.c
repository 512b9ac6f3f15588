/*
 * flotilla-shim: the per-process supervisor of the Flotilla runtime service.
 *
 *   flotilla-shim -s STATEDIR [-i STDIN] [-o STDOUT] [-e STDERR] [-t] [-u] [-x EXE] -- RUNTIME ARGS...
 *
 * Runs the OCI runtime's "create" (or "exec --detach") command given after "--", becomes the
 * child subreaper so the container's process is reparented to it, holds that process' stdio
 * (copying between the client's FIFOs and the process' pipes or pty), reaps it and writes its
 * exit status to STATEDIR/exit ("<status> <unix ns>\n", written to a temporary file and
 * renamed: it outlives any crash of the runtime service). It daemonizes (new session), so it
 * outlives the runtime service.
 *
 * The argument "@CONSOLE@" in the runtime's command is replaced by a console socket path; the
 * pty master arrives there (SCM_RIGHTS). STATEDIR/ctl is a FIFO taking commands:
 *   "resize <cols> <rows>\n"   set the pty's window size
 *   "closestdin\n"             close the process' stdin
 * The runtime's pid file must be STATEDIR/pid. The first process prints "<pid> <shim pid>\n"
 * once the runtime command succeeded, or exits 1 with the runtime's status on stderr.
 *
 * -u runs the runtime command in a mount namespace of its own where /sys/fs/cgroup/unified is
 * unmounted: crun refuses a hybrid cgroup host whose cgroup2 mount has a controller, and sees
 * plain cgroup v1 without it (only its create and restore look; the container's cgroups are
 * the same v1 ones runc uses).
 *
 * -x executes the runtime from EXE (its sealed copy, /proc/<pid>/fd/<n>) while its argv[0]
 * stays the runtime's name.
 *
 * Why C: a Python supervisor costs ~10 MiB RSS per container; this one costs a few hundred KiB.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define BUF 32768

static const char *state_dir;
static char console_dir[64], console_path[128];

static void die(int sync_fd, const char *what) {
    char msg[512];
    int n = snprintf(msg, sizeof msg, "E%s: %s\n", what, strerror(errno));
    if (sync_fd >= 0 && write(sync_fd, msg, (size_t)n) < 0) { /* parent reports nothing */ }
    _exit(1);
}

static int open_devnull(int flags) {
    return open("/dev/null", flags | O_CLOEXEC);
}

/* Output FIFOs are opened read-write, as containerd's shim keeps a reader open too: writes never
 * fail with EPIPE when the client goes away, and the client sees EOF once we close. */
static int open_out(const char *path) {
    if (!path) return -1;
    return open(path, O_RDWR | O_CLOEXEC);
}

static void write_all(int fd, const char *buf, ssize_t n) {
    while (n > 0 && fd >= 0) {
        ssize_t w = write(fd, buf, (size_t)n);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) { struct pollfd p = {fd, POLLOUT, 0}; poll(&p, 1, 1000); continue; }
            return;
        }
        buf += w;
        n -= w;
    }
}

struct stream {
    int src, dst;
    size_t len, off;   /* bytes read from src and not yet written to dst: buf[off..len) */
    char buf[BUF];
};

/* stdin's end: the FIFO is closed; a pipe's write end too (EOF for the process), a pty stays */
static void close_stdin(struct stream *x, int terminal) {
    if (x->src >= 0) { close(x->src); x->src = -1; }
    if (!terminal && x->dst >= 0) close(x->dst);
    if (!terminal) x->dst = -1;
    x->len = x->off = 0;
}

static void write_exit(int status) {
    char tmp[4096], final[4096], line[64];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long ns = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    snprintf(tmp, sizeof tmp, "%s/exit.tmp", state_dir);
    snprintf(final, sizeof final, "%s/exit", state_dir);
    int n = snprintf(line, sizeof line, "%d %lld\n", status, ns);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return;
    write_all(fd, line, n);
    close(fd);
    /* atomic for any reader; no fsync: the record must outlive the runtime service, not the
     * host (the state lives on tmpfs, and no container survives a reboot) */
    rename(tmp, final);
}

/* called once the runtime command has exited: the runtime connected and sent the master
 * before that, or never will (say, its process spec asked for no terminal); never wait forever */
static int recv_master(int listener) {
    struct pollfd p = {listener, POLLIN, 0};
    if (poll(&p, 1, 1000) <= 0) { errno = ETIMEDOUT; return -1; }
    int conn = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    if (conn < 0) return -1;
    char data[256];
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {data, sizeof data};
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf;
    msg.msg_controllen = sizeof cbuf;
    int fd = -1;
    if (recvmsg(conn, &msg, MSG_CMSG_CLOEXEC) >= 0) {
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
            memcpy(&fd, CMSG_DATA(c), sizeof(int));
    }
    close(conn);
    return fd;
}

static int read_pid(void) {
    char path[4096], buf[32] = {0};
    snprintf(path, sizeof path, "%s/pid", state_dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    return n > 0 ? atoi(buf) : -1;
}

/* As containerd's shims: one above the OOM score the daemon's runtime service passed down (capped
 * at 1000), so under memory pressure the kernel picks a supervisor and its container, which
 * inherits the score, before the daemon. Raising needs no privilege. */
static void raise_oom_score(void) {
    char buf[16] = {0};
    int fd = open("/proc/self/oom_score_adj", O_RDWR | O_CLOEXEC);
    if (fd < 0) return;
    if (read(fd, buf, sizeof buf - 1) > 0) {
        int score = atoi(buf) + 1;
        int n = snprintf(buf, sizeof buf, "%d", score > 1000 ? 1000 : score);
        if (pwrite(fd, buf, (size_t)n, 0) < 0) { /* left as inherited */ }
    }
    close(fd);
}

static void cleanup_console(void) {
    if (console_path[0]) unlink(console_path);
    if (console_dir[0]) rmdir(console_dir);
}

int main(int argc, char **argv) {
    const char *in_path = NULL, *out_path = NULL, *err_path = NULL, *exe = NULL;
    int terminal = 0, hide_unified = 0, opt;
    while ((opt = getopt(argc, argv, "+s:i:o:e:tux:")) != -1) {
        switch (opt) {
        case 's': state_dir = optarg; break;
        case 'i': in_path = optarg; break;
        case 'o': out_path = optarg; break;
        case 'e': err_path = optarg; break;
        case 't': terminal = 1; break;
        case 'u': hide_unified = 1; break;
        case 'x': exe = optarg; break;
        default: return 2;
        }
    }
    if (!state_dir || optind >= argc) {
        fprintf(stderr, "usage: flotilla-shim -s STATEDIR [-i IN] [-o OUT] [-e ERR] [-t] [-u] [-x EXE] -- RUNTIME ARGS...\n");
        return 2;
    }
    char **rt_argv = argv + optind;
    /* whatever the caller leaked (event-loop sockets, its other pipes) must not be held by us or
     * the container: a held copy of the caller's stdout pipe would keep it waiting forever */
    if (close_range(3, ~0U, 0) < 0)  /* one call, not a thousand (kernel 5.9+) */
        for (int fd = 3; fd < 1024; fd++) close(fd);

    /* the first process waits for the runtime command's outcome, then leaves: the caller gets
     * a plain exit status while the supervisor lives on in its own session */
    int sync[2];
    if (pipe2(sync, O_CLOEXEC) < 0) { perror("pipe"); return 1; }
    pid_t child = fork();
    if (child < 0) { perror("fork"); return 1; }
    if (child > 0) {
        close(sync[1]);
        char msg[1024];
        ssize_t n, total = 0;
        while ((n = read(sync[0], msg + total, sizeof msg - 1 - (size_t)total)) > 0) total += n;
        msg[total] = 0;
        if (total > 0 && msg[0] == 'O') { fputs(msg + 1, stdout); return 0; }
        fputs(total > 0 ? msg + 1 : "supervisor failed\n", stderr);
        return 1;
    }
    close(sync[0]);
    int sfd = sync[1];
    setsid();
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    raise_oom_score();
    signal(SIGPIPE, SIG_IGN);
    int dn = open_devnull(O_RDWR);
    dup2(dn, 0); dup2(dn, 1); dup2(dn, 2);
    if (dn > 2) close(dn);

    /* SIGCHLD through a signalfd so reaping happens in the poll loop */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sigfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);

    char ctl_path[4096];
    snprintf(ctl_path, sizeof ctl_path, "%s/ctl", state_dir);
    unlink(ctl_path);
    if (mkfifo(ctl_path, 0600) < 0) die(sfd, "mkfifo ctl");
    int ctl = open(ctl_path, O_RDWR | O_NONBLOCK | O_CLOEXEC);

    int stdin_fifo = -1;
    if (in_path) {
        stdin_fifo = open(in_path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
        if (stdin_fifo < 0) die(sfd, "open stdin fifo");
    }
    int out_fd = open_out(out_path), err_fd = open_out(err_path);
    if (out_path && out_fd < 0) die(sfd, "open stdout fifo");
    if (err_path && err_fd < 0) die(sfd, "open stderr fifo");

    /* the process' side of stdio: pipes, or a pty received through the console socket */
    int p_in[2] = {-1, -1}, p_out[2] = {-1, -1}, p_err[2] = {-1, -1};
    int listener = -1;
    if (terminal) {
        strcpy(console_dir, "/tmp/flotilla-pty-XXXXXX");
        if (!mkdtemp(console_dir)) die(sfd, "mkdtemp");
        snprintf(console_path, sizeof console_path, "%s/c.sock", console_dir);
        listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un addr = {.sun_family = AF_UNIX};
        strncpy(addr.sun_path, console_path, sizeof addr.sun_path - 1);
        if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listener, 1) < 0)
            die(sfd, "console socket");
        for (char **a = rt_argv; *a; a++)
            if (strcmp(*a, "@CONSOLE@") == 0) *a = console_path;
    } else {
        if (in_path && pipe2(p_in, O_CLOEXEC) < 0) die(sfd, "pipe");
        if (out_path && pipe2(p_out, O_CLOEXEC) < 0) die(sfd, "pipe");
        if (err_path && pipe2(p_err, O_CLOEXEC) < 0) die(sfd, "pipe");
    }

    pid_t rt = fork();
    if (rt < 0) die(sfd, "fork");
    if (rt == 0) {
        sigprocmask(SIG_UNBLOCK, &mask, NULL);
        signal(SIGPIPE, SIG_DFL);
        int nul = open("/dev/null", O_RDWR);
        dup2(p_in[0] >= 0 ? p_in[0] : nul, 0);
        dup2(p_out[1] >= 0 ? p_out[1] : nul, 1);
        dup2(p_err[1] >= 0 ? p_err[1] : nul, 2);
        /* slave first, so the unmount never propagates back to the host's mounts */
        if (hide_unified && (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0 ||
                             umount2("/sys/fs/cgroup/unified", MNT_DETACH) < 0)) {
            perror("flotilla-shim: hiding /sys/fs/cgroup/unified");
            _exit(126);
        }
        if (exe) execv(exe, rt_argv);
        else execvp(rt_argv[0], rt_argv);
        _exit(127);
    }
    if (p_in[0] >= 0) close(p_in[0]);
    if (p_out[1] >= 0) close(p_out[1]);
    if (p_err[1] >= 0) close(p_err[1]);

    /* wait for the runtime command; the process it leaves behind is reparented to us */
    int st = 0, init_status = -1;
    pid_t init_pid = -1;
    /* an exec'd process may exit (and be reaped here) before the runtime command returns */
    pid_t early_pid[64];
    int early_status[64], n_early = 0;
    for (;;) {
        pid_t r = waitpid(-1, &st, 0);
        if (r == rt) break;
        if (r < 0 && errno != EINTR) die(sfd, "waitpid");
        if (r > 0 && n_early < 64) {
            early_pid[n_early] = r;
            early_status[n_early++] = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        char msg[128];
        int n = snprintf(msg, sizeof msg, "Eruntime exited with status %d\n",
                         WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
        if (write(sfd, msg, (size_t)n) < 0) { /* nothing to do */ }
        cleanup_console();
        unlink(ctl_path);
        _exit(1);
    }
    init_pid = read_pid();
    if (init_pid <= 0) die(sfd, "read pid file");
    for (int k = 0; k < n_early; k++)
        if (early_pid[k] == init_pid) init_status = early_status[k];
    int master = -1;
    if (terminal) {
        master = recv_master(listener);
        close(listener);
        cleanup_console();
        if (master < 0) {  /* its process runs without the terminal its client holds: end it */
            int err = errno;
            kill(init_pid, SIGKILL);
            errno = err;
            die(sfd, "receive console master");
        }
    }
    {
        char msg[64];
        int n = snprintf(msg, sizeof msg, "O%d %d\n", init_pid, (int)getpid());
        if (write(sfd, msg, (size_t)n) < 0) { /* parent gone: keep supervising */ }
        close(sfd);
    }
    /* three copy streams; every descriptor is non-blocking, and a stream whose destination is
     * full stops reading its source (back-pressure on the process, as containerd's shim
     * applies) without ever stopping the loop: reaping and ctl commands go on */
    static struct stream st_in, st_out, st_err;  /* static: buffers off the stack, zeroed */
    st_in.src = stdin_fifo;
    st_in.dst = terminal ? master : p_in[1];
    st_out.src = terminal ? master : p_out[0];
    st_out.dst = out_fd;
    st_err.src = terminal ? -1 : p_err[0];
    st_err.dst = err_fd;
    struct stream *streams[3] = {&st_in, &st_out, &st_err};
    for (int k = 0; k < 3; k++) {
        if (streams[k]->src >= 0) fcntl(streams[k]->src, F_SETFL, fcntl(streams[k]->src, F_GETFL) | O_NONBLOCK);
        if (streams[k]->dst >= 0) fcntl(streams[k]->dst, F_SETFL, fcntl(streams[k]->dst, F_GETFL) | O_NONBLOCK);
    }
    /* the last size asked for: crun may still be setting the new pty up (to 0x0) when our
     * first resize lands, so the size is checked again once the process has written */
    struct winsize want = {0};
    int recheck_size = 0;
    int exited = 0;
    for (;;) {
        struct pollfd fds[8];
        int nf = 0;
        int i_sig = -1, i_ctl = -1, idx[3] = {-1, -1, -1};
        if (!exited) { i_sig = nf; fds[nf++] = (struct pollfd){sigfd, POLLIN, 0}; }
        if (!exited && ctl >= 0) { i_ctl = nf; fds[nf++] = (struct pollfd){ctl, POLLIN, 0}; }
        int busy = 0;  /* output still to move */
        for (int k = 0; k < 3; k++) {
            struct stream *x = streams[k];
            if (k == 0 && exited) continue;  /* nobody reads stdin any more */
            if (x->len > x->off && x->dst >= 0) {
                idx[k] = nf; fds[nf++] = (struct pollfd){x->dst, POLLOUT, 0};
            } else if (x->src >= 0) {
                idx[k] = nf; fds[nf++] = (struct pollfd){x->src, POLLIN, 0};
            }
            if (k > 0 && (x->src >= 0 || x->len > x->off)) busy = 1;
        }
        if (exited && !busy) break;
        /* after the exit, output is drained until EOF or until it stays stuck briefly: a
         * leftover holder of the pipe, or a client gone from its FIFO, must not keep the exit
         * from being recorded */
        int r = poll(fds, (nfds_t)nf, exited ? 100 : (init_status >= 0 ? 0 : -1));
        if (r < 0) { if (errno == EINTR) continue; break; }
        if (r == 0 && exited) break;
        if (r == 0 && init_status >= 0) { exited = 1; continue; }
        if (i_sig >= 0 && fds[i_sig].revents) {
            struct signalfd_siginfo si;
            while (read(sigfd, &si, sizeof si) > 0) {}
        }
        /* reap everything: the process' exit gives the status, orphans are just collected */
        for (;;) {
            pid_t w = waitpid(-1, &st, WNOHANG);
            if (w <= 0) break;
            if (w == init_pid)
                init_status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        if (i_ctl >= 0 && (fds[i_ctl].revents & POLLIN)) {
            char cmd[256];
            ssize_t n = read(ctl, cmd, sizeof cmd - 1);
            if (n > 0) {
                cmd[n] = 0;
                for (char *line = strtok(cmd, "\n"); line; line = strtok(NULL, "\n")) {
                    unsigned cols, rows;
                    if (sscanf(line, "resize %u %u", &cols, &rows) == 2 && master >= 0) {
                        want = (struct winsize){.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
                        ioctl(master, TIOCSWINSZ, &want);
                        recheck_size = 1;
                    } else if (strcmp(line, "closestdin") == 0) {
                        close_stdin(&st_in, terminal);
                    }
                }
            }
        }
        for (int k = 0; k < 3; k++) {
            struct stream *x = streams[k];
            if (idx[k] < 0 || !fds[idx[k]].revents) continue;
            if (x->len > x->off) {
                ssize_t w = write(x->dst, x->buf + x->off, x->len - x->off);
                if (w > 0) x->off += (size_t)w;
                else if (w < 0 && errno != EAGAIN && errno != EINTR) x->off = x->len;  /* reader gone */
                if (x->off >= x->len) x->off = x->len = 0;
                continue;
            }
            ssize_t n = read(x->src, x->buf, sizeof x->buf);
            if (n > 0) {
                if (recheck_size && x->src == master) {  /* past its exec: no one resets it now */
                    struct winsize now;
                    if (ioctl(master, TIOCGWINSZ, &now) == 0 &&
                        (now.ws_row != want.ws_row || now.ws_col != want.ws_col))
                        ioctl(master, TIOCSWINSZ, &want);
                    recheck_size = 0;
                }
                if (x->dst < 0) continue;  /* nowhere to go */
                x->len = (size_t)n;
                x->off = 0;
            } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                /* EOF (or EIO from a pty whose process is gone) */
                if (k == 0) {
                    close_stdin(&st_in, terminal);  /* the client closed stdin: the process sees EOF */
                } else {
                    if (x->src != master) close(x->src);
                    x->src = -1;
                }
            }
        }
        if (init_status >= 0 && !exited && st_out.src < 0 && st_err.src < 0 &&
            st_out.len == st_out.off && st_err.len == st_err.off)
            exited = 1;
    }
    write_exit(init_status < 0 ? 255 : init_status);
    unlink(ctl_path);
    return 0;
}
