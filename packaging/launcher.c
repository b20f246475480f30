/*
 * The bundle's executable: `berth` and every plugin link to it.
 *
 * It execs the bundle's own interpreter (_internal/bin/python3.X, a copy of
 * the build machine's python binary, whose ._pth file beside it pins sys.path
 * to the bundle and isolates it from PYTHON* variables and site-packages) on
 * the bundle's entry module, forwarding every argument untouched:
 *
 *     _internal/bin/python3.X -I _internal/berth_entry.pyc REAL_SELF ARGV0 ARGS...
 *
 * -I: PYTHON* variables of the caller's environment are ignored (the ._pth
 * file fixes sys.path, not the rest of the configuration). The arguments never
 * reach the interpreter's own option parser (they follow the script), so
 * `berth --help` is berth's help. REAL_SELF is this file's
 * resolved path: the entry reports it as sys.executable, which is what
 * berth compares delegated plugins' paths with.
 *
 * If the interpreter cannot be exec'd, the answer is a CNI error on stdout.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef BERTH_PYTHON
#error "build with -DBERTH_PYTHON='\"bin/python3.X\"'"
#endif

static int fail(const char *what, const char *path, int err)
{
    /* JSON-safe: paths of the bundle are ours, but quote-free output is checked anyway */
    const char *p;
    printf("{\"cniVersion\": \"1.1.0\", \"code\": 999, \"msg\": \"berth: %s\", \"details\": \"", what);
    for (p = path; *p; p++)
        putchar((*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) ? '?' : *p);
    printf(": %s\"}\n", strerror(err));
    return 1;
}

int main(int argc, char **argv)
{
    char self[PATH_MAX], python[PATH_MAX], entry[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    char *slash;
    char **args;
    int i;

    if (n <= 0)
        return fail("cannot find its own executable", "/proc/self/exe", errno);
    self[n] = '\0';
    slash = strrchr(self, '/');
    if (slash == NULL)
        return fail("cannot find its own executable", self, EINVAL);
    *slash = '\0';
    if (snprintf(python, sizeof python, "%s/_internal/%s", self, BERTH_PYTHON) >= (int)sizeof python ||
        snprintf(entry, sizeof entry, "%s/_internal/berth_entry.pyc", self) >= (int)sizeof entry)
        return fail("bundle path too long", self, ENAMETOOLONG);
    *slash = '/';

    args = calloc((size_t)argc + 5, sizeof *args);
    if (args == NULL)
        return fail("out of memory", self, ENOMEM);
    args[0] = python;
    args[1] = "-I";
    args[2] = entry;
    args[3] = self;
    args[4] = argc > 0 ? argv[0] : self;
    for (i = 1; i < argc; i++)
        args[i + 4] = argv[i];
    execv(python, args);
    return fail("cannot start the bundled interpreter", python, errno);
}
