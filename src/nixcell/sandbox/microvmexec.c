/* nixcell microVM guest exec helper: what bwrap does for a cell's program, done as root in the
 * guest just before the program runs. Drops every capability from the bounding set, clears the
 * ambient and inheritable sets, becomes UID:GID with no supplementary groups (never root),
 * sets no-new-privs, marks every fd above 2 close-on-exec, installs the plan's seccomp program
 * (the raw struct sock_filter array bwrap gets with --seccomp FD, read from FILTER_FD) and execs
 * PROG with ARGS and the environment it was given. Any failure is an error (exit 126): the
 * program never runs with less than asked. Built statically by nixcell (gcc -static).
 * Usage: exec UID GID FILTER_FD PROG [ARG...]   (argv[0] of PROG is PROG itself) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_INSNS 4096 /* BPF_MAXINSNS */
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC 4
#endif

extern char **environ;

static void die(const char *what) {
    int e = errno;
    dprintf(2, "nixcell: cannot start the cell's program: %s: %s\n", what, strerror(e));
    _exit(126);
}

static long number(const char *s, const char *what) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0 || v > 0x7fffffffL) { errno = EINVAL; die(what); }
    return v;
}

int main(int argc, char **argv) {
    if (argc < 5) { errno = EINVAL; die("usage: exec UID GID FILTER_FD PROG [ARG...]"); }
    uid_t uid = (uid_t)number(argv[1], "uid");
    gid_t gid = (gid_t)number(argv[2], "gid");
    int ffd = (int)number(argv[3], "filter fd");
    if (uid == 0 || gid == 0) { errno = EPERM; die("the cell's program never runs as root"); }

    static struct sock_filter insns[MAX_INSNS + 1];
    size_t have = 0, cap = sizeof insns;
    for (;;) {
        ssize_t r = read(ffd, (char *)insns + have, cap - have);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) die("read the seccomp program");
        if (r == 0) break;
        have += (size_t)r;
        if (have == cap) { errno = E2BIG; die("the seccomp program"); }
    }
    close(ffd);
    if (have == 0 || have % sizeof(struct sock_filter)) { errno = EINVAL; die("the seccomp program"); }
    struct sock_fprog prog = {.len = (unsigned short)(have / sizeof(struct sock_filter)), .filter = insns};

    /* the bounding set: every capability the kernel knows (EINVAL past the last one) */
    int last = -1;
    for (int c = 0; c < 64; c++) {
        if (prctl(PR_CAPBSET_READ, c, 0, 0, 0) < 0) { if (errno == EINVAL) break; die("read the bounding set"); }
        if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0) die("drop a capability from the bounding set");
        last = c;
    }
    if (last < 0) { errno = EINVAL; die("the bounding set"); }
    for (int c = 0; c <= last; c++)
        if (prctl(PR_CAPBSET_READ, c, 0, 0, 0) != 0) { errno = EPERM; die("a capability left in the bounding set"); }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0) die("clear the ambient set");

    if (setgroups(0, NULL) < 0) die("setgroups");
    if (setresgid(gid, gid, gid) < 0) die("setresgid");
    if (setresuid(uid, uid, uid) < 0) die("setresuid");
    struct __user_cap_header_struct head = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct none[2];
    memset(none, 0, sizeof none);
    if (syscall(SYS_capset, &head, none) < 0) die("clear the capability sets");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) die("no-new-privs");

    if (syscall(SYS_close_range, 3u, ~0u, CLOSE_RANGE_CLOEXEC) < 0) {
        for (int fd = 3; fd < 65536; fd++) fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0) die("install the seccomp program");
    execve(argv[4], &argv[4], environ);
    int e = errno;
    dprintf(2, "nixcell: %s: %s\n", argv[4], strerror(e));
    _exit(e == ENOENT ? 127 : 126);
}
