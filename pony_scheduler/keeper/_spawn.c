/* Starting a run's process directly inside its cgroup: clone3(2) with CLONE_INTO_CGROUP.
 *
 * Why: the keeper used to write itself into the run's group, posix_spawn, and write itself
 * back.  Moving a process between cgroups takes cgroup_threadgroup_rwsem for writing,
 * which waits for an RCU grace period: about 7 ms on an idle host, paid by every run
 * that does not follow another within a few milliseconds (a job every minute, say), and
 * the keeper's whole loop waits with it.  A child created in the group needs no move.
 *
 * How: clone3 with CLONE_VM | CLONE_VFORK (as posix_spawn's vfork: no copy of the
 * keeper's memory; the keeper waits until the child has exec'd or failed) on a stack of
 * its own, since the child must not touch the keeper's stack.  The child only makes
 * async-signal-safe calls: signal dispositions back to their defaults (those the keeper
 * catches, and the ones named), a new session, stdin/stdout/stderr, an empty signal
 * mask, a write of "0" to the cgroup.procs of each cgroup v1 group it must join (so that
 * its limits, written before the spawn, hold from its first instruction: a pids.max
 * written after it let a job that forks at once run 50 processes under --tasks-max 5),
 * execve.  An exec failure's errno comes back through the shared memory.
 * Sources: clone(2) (clone3, CLONE_INTO_CGROUP since Linux 5.7), vfork(2),
 * signal-safety(7), glibc's sysdeps/unix/sysv/linux/spawni.c (the same pattern).
 *
 * x86-64 only (the clone3 entry is a few lines of assembly); elsewhere spawn() raises
 * OSError(ENOSYS) and the keeper moves itself into the group as before.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/sched.h>

#define CHILD_STACK (64 * 1024)
#define MAX_JOINS 8 /* cgroup v1 hierarchies a run's process joins: one per controller */

struct child {
    const char *path;
    char **argv;
    char **envp;
    int stdin_fd;
    int out_fd;
    uint64_t sigdef; /* bit (sig - 1): reset to SIG_DFL even when ignored */
    int joins[MAX_JOINS]; /* cgroup.procs of v1 groups, open for writing */
    int njoins;
    volatile int err;
    volatile int joining; /* err is a join's, not the exec's */
};

#if defined(__x86_64__)
/* long pony_clone3(struct clone_args *args, size_t size, int (*fn)(void *), void *arg):
 * the parent returns the child's pid (or -errno); the child, on the stack clone_args
 * names, calls fn(arg) and exits with its result.  r8/r9 survive the syscall. */
long pony_clone3(struct clone_args *args, size_t size, int (*fn)(void *), void *arg);
__asm__(
    ".text\n"
    ".globl pony_clone3\n"
    ".hidden pony_clone3\n"
    ".type pony_clone3,@function\n"
    "pony_clone3:\n"
    "    mov %rdx, %r8\n"
    "    mov %rcx, %r9\n"
    "    mov $435, %eax\n" /* SYS_clone3 */
    "    syscall\n"
    "    test %rax, %rax\n"
    "    jz 1f\n"
    "    ret\n"
    "1:  xor %ebp, %ebp\n"
    "    mov %r9, %rdi\n"
    "    call *%r8\n"
    "    mov %eax, %edi\n"
    "    mov $60, %eax\n" /* SYS_exit */
    "    syscall\n"
    "    hlt\n"
    ".size pony_clone3, .-pony_clone3\n");
#define HAVE_CLONE3 1
#endif

#ifdef HAVE_CLONE3
/* dup2, or - when fd is target already - clearing its close-on-exec flag, which dup2
 * would leave set (as glibc's posix_spawn file actions do). */
static int onto(int fd, int target)
{
    if (fd != target)
        return dup2(fd, target);
    int flags = fcntl(fd, F_GETFD);
    return flags < 0 ? -1 : fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC);
}

static int child_main(void *arg)
{
    struct child *c = arg;
    struct sigaction dfl;
    sigset_t none;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < 65; sig++) {
        struct sigaction old;
        if (sig == SIGKILL || sig == SIGSTOP || sigaction(sig, NULL, &old) != 0)
            continue;
        int named = sig <= 64 && (c->sigdef >> (sig - 1)) & 1;
        if (old.sa_handler == SIG_DFL || (old.sa_handler == SIG_IGN && !named))
            continue;
        sigaction(sig, &dfl, NULL);
    }
    if (setsid() < 0 || onto(c->stdin_fd, 0) < 0 || onto(c->out_fd, 1) < 0 ||
        onto(c->out_fd, 2) < 0)
        goto fail;
    for (int i = 0; i < c->njoins; i++) {
        if (write(c->joins[i], "0", 1) != 1) {
            c->joining = 1;
            goto fail;
        }
    }
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(c->path, c->argv, c->envp);
fail:
    c->err = errno ? errno : EINVAL;
    _exit(127);
}

static char *child_stack;
#endif

static void free_list(char **list)
{
    PyMem_Free(list);
}

/* A list of bytes -> NULL-terminated char*[] borrowing the bytes' buffers. */
static char **make_list(PyObject *seq)
{
    Py_ssize_t n = PyList_Size(seq);
    if (n < 0)
        return NULL;
    char **list = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (list == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(seq, i);
        if (!PyBytes_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "argv and env items must be bytes");
            free_list(list);
            return NULL;
        }
        list[i] = PyBytes_AS_STRING(item);
        if (strlen(list[i]) != (size_t)PyBytes_GET_SIZE(item)) {
            PyErr_SetString(PyExc_ValueError, "embedded null byte");
            free_list(list);
            return NULL;
        }
    }
    return list;
}

PyDoc_STRVAR(spawn_doc,
"spawn(path, argv, env, cgroup_fd, stdin_fd, out_fd, sigdef, joins) -> pid\n\n"
"Start `path` (bytes) with `argv` and `env` (lists of bytes, env items b'K=V') in a new\n"
"session, inside the cgroup v2 directory open as `cgroup_fd` (O_PATH is enough; -1: the\n"
"caller's), in the cgroup v1 groups whose cgroup.procs files are open for writing as\n"
"`joins` (a tuple of at most 8 fds; the child writes itself in before the exec), with\n"
"stdin from `stdin_fd` and stdout and stderr on `out_fd`, an empty signal mask, and the\n"
"signals the caller catches, plus those in `sigdef` (a tuple of numbers), at their\n"
"defaults.  The child's cwd and umask are the caller's.  Returns the pid once the\n"
"child has exec'd.  Raises ValueError for a NUL byte in path, argv or env; OSError:\n"
"the exec's own errno with the path as filename (the failed child is reaped), or\n"
"clone3's, without a filename (ENOSYS/EINVAL/EPERM...: no clone3 or CLONE_INTO_CGROUP\n"
"here, or a seccomp filter; EBUSY/EOPNOTSUPP/EACCES/ENOENT: the group cannot take\n"
"this process; EAGAIN/ENOMEM: no process can be made now); a join's errno with the\n"
"filename 'cgroup.procs' (the failed child is reaped).");

static PyObject *spawn(PyObject *self, PyObject *args)
{
    PyObject *path_obj, *argv_obj, *env_obj, *sigdef_obj, *joins_obj;
    int cgroup_fd, stdin_fd, out_fd;
    if (!PyArg_ParseTuple(args, "SO!O!iiiO!O!", &path_obj, &PyList_Type, &argv_obj,
                          &PyList_Type, &env_obj, &cgroup_fd, &stdin_fd, &out_fd,
                          &PyTuple_Type, &sigdef_obj, &PyTuple_Type, &joins_obj))
        return NULL;
#ifndef HAVE_CLONE3
    errno = ENOSYS;
    return PyErr_SetFromErrno(PyExc_OSError);
#else
    struct child c;
    memset(&c, 0, sizeof c);
    c.path = PyBytes_AS_STRING(path_obj);
    if (strlen(c.path) != (size_t)PyBytes_GET_SIZE(path_obj)) {
        PyErr_SetString(PyExc_ValueError, "embedded null byte");
        return NULL;
    }
    c.stdin_fd = stdin_fd;
    c.out_fd = out_fd;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(sigdef_obj); i++) {
        long sig = PyLong_AsLong(PyTuple_GET_ITEM(sigdef_obj, i));
        if (sig == -1 && PyErr_Occurred())
            return NULL;
        if (sig >= 1 && sig <= 64)
            c.sigdef |= (uint64_t)1 << (sig - 1);
    }
    if (PyTuple_GET_SIZE(joins_obj) > MAX_JOINS) {
        PyErr_SetString(PyExc_ValueError, "at most 8 groups to join");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(joins_obj); i++) {
        int fd = (int)PyLong_AsLong(PyTuple_GET_ITEM(joins_obj, i));
        if (fd == -1 && PyErr_Occurred())
            return NULL;
        c.joins[c.njoins++] = fd;
    }
    c.argv = make_list(argv_obj);
    if (c.argv == NULL)
        return NULL;
    c.envp = make_list(env_obj);
    if (c.envp == NULL) {
        free_list(c.argv);
        return NULL;
    }
    if (child_stack == NULL) {
        void *stack = mmap(NULL, CHILD_STACK, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
        if (stack == MAP_FAILED) {
            free_list(c.argv);
            free_list(c.envp);
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        child_stack = stack;
    }
    struct clone_args ca;
    memset(&ca, 0, sizeof ca);
    ca.flags = CLONE_VM | CLONE_VFORK | (cgroup_fd >= 0 ? CLONE_INTO_CGROUP : 0);
    ca.exit_signal = SIGCHLD;
    ca.stack = (uint64_t)(uintptr_t)child_stack;
    ca.stack_size = CHILD_STACK;
    ca.cgroup = cgroup_fd >= 0 ? (uint64_t)cgroup_fd : 0;
    /* No handler of ours may run in the child (it shares our memory) before it has
     * put them back to their defaults: everything blocked across the clone. */
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    long pid = pony_clone3(&ca, sizeof ca, child_main, &c);
    sigprocmask(SIG_SETMASK, &old, NULL);
    free_list(c.argv);
    free_list(c.envp);
    if (pid < 0) {
        errno = (int)-pid;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (c.err) {
        int status;
        while (waitpid((pid_t)pid, &status, 0) < 0 && errno == EINTR)
            ;
        errno = c.err;
        if (c.joining)
            return PyErr_SetFromErrnoWithFilename(PyExc_OSError, "cgroup.procs");
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path_obj);
    }
    return PyLong_FromLong(pid);
#endif
}

static PyMethodDef methods[] = {
    {"spawn", spawn, METH_VARARGS, spawn_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_spawn",
    "clone3(CLONE_INTO_CGROUP) for the run keeper (see _spawn.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__spawn(void)
{
    return PyModule_Create(&module);
}
