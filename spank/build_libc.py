"""cffi builder of shifter_core._libc: the libc calls of shifter_core.syscalls.

Out-of-line ABI mode: the declarations are parsed here, at build time, into a
small generated Python module, so the prolog and the tasks do not import
pycparser and parse C at every start (about 10 ms).  `setup.py` builds it
through `cffi_modules`.
"""
import cffi

ffi = cffi.FFI()
ffi.cdef("""
int mount(const char *source, const char *target, const char *fstype,
          unsigned long flags, const void *data);
int umount2(const char *target, int flags);
int unshare(int flags);
int setns(int fd, int nstype);
int prctl(int option, unsigned long arg2, unsigned long arg3,
          unsigned long arg4, unsigned long arg5);
""")
ffi.set_source("shifter_core._libc", None)

if __name__ == "__main__":
    ffi.compile()
