"""cffi builder of shifter_core._libc: the libc calls of shifter_core.syscalls.

Out-of-line ABI mode: the declarations are parsed here, at build time, into a
small generated Python module, so the prolog and the tasks do not import
pycparser and parse C at every start (about 10 ms).  `setup.py` builds it
through `cffi_modules`.

openat2 and the mount API (open_tree, move_mount, fsopen, fsconfig, fsmount,
mount_setattr) have no wrapper in older C libraries, so they go through
syscall(2); their numbers are the same on every Linux architecture.
"""
import cffi

ffi = cffi.FFI()
ffi.cdef("""
int unshare(int flags);
int setns(int fd, int nstype);
int prctl(int option, unsigned long arg2, unsigned long arg3,
          unsigned long arg4, unsigned long arg5);
long syscall(long number, ...);

struct open_how {
    uint64_t flags;
    uint64_t mode;
    uint64_t resolve;
};

struct mount_attr {
    uint64_t attr_set;
    uint64_t attr_clr;
    uint64_t propagation;
    uint64_t userns_fd;
};
""")
ffi.set_source("shifter_core._libc", None)

if __name__ == "__main__":
    ffi.compile()
