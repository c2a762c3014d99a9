"""cffi builder of shifter_core._munge: the libmunge calls of shifter_core.munge.

Out-of-line ABI mode, as spank/build_libc.py: the declarations are parsed at
build time, so no process imports pycparser to talk to munged.
"""
import cffi

ffi = cffi.FFI()
ffi.cdef("""
typedef unsigned int uid_t;
typedef unsigned int gid_t;
typedef struct munge_ctx *munge_ctx_t;
munge_ctx_t munge_ctx_create(void);
void munge_ctx_destroy(munge_ctx_t ctx);
const char *munge_ctx_strerror(munge_ctx_t ctx);
int munge_ctx_set(munge_ctx_t ctx, int opt, ...);
int munge_encode(char **cred, munge_ctx_t ctx, const void *buf, int len);
int munge_decode(const char *cred, munge_ctx_t ctx, void **buf, int *len,
                 uid_t *uid, gid_t *gid);
const char *munge_strerror(int e);
void free(void *ptr);
""")
ffi.set_source("shifter_core._munge", None)

if __name__ == "__main__":
    ffi.compile()
