"""munge credentials through libmunge (cffi ABI mode, no unmunge subprocess).

The gateway trusts a request because the client's munged encoded the caller's
uid and gid with the cluster's key; the gateway decodes it with the munged of
the system named in the URL (one socket per system, so systems may use
different keys).  munged refuses to decode a credential twice, so a client
makes a fresh one for every request.

    >>> m = Munge("/run/munge/munge.socket.2")
    >>> cred = m.encode(b"payload")
    >>> m.decode(cred).uid == os.getuid()
    True
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading

import cffi

from .errors import AuthenticationError

DEFAULT_SOCKET = "/run/munge/munge.socket.2"

_CDEF = """
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
"""

# From munge.h (munge 0.5.x): options and the error numbers we tell apart.
_OPT_TTL = 4
_OPT_SOCKET = 8
_OPT_UID_RESTRICTION = 9
_ERR_SOCKET = 6
_ERR_BAD_CRED = 8
_ERR_CRED_INVALID = 14
_ERR_CRED_EXPIRED = 15
_ERR_CRED_REWOUND = 16
_ERR_CRED_REPLAYED = 17

_ffi = cffi.FFI()
_ffi.cdef(_CDEF)
_lib = None
_lib_lock = threading.Lock()


class MungeError(AuthenticationError):
    """munged refused or could not handle a credential."""


class CredentialExpired(MungeError):
    """The credential's time-to-live has passed (or the clocks disagree)."""


class CredentialReplayed(MungeError):
    """The credential was already decoded once."""


@dataclasses.dataclass(frozen=True)
class Credential:
    """What a decoded credential proves: who made it, and what it carries."""

    uid: int
    gid: int
    payload: bytes


def _library():
    global _lib
    with _lib_lock:
        if _lib is None:
            try:
                _lib = _ffi.dlopen("libmunge.so.2")
            except OSError:
                raise MungeError("libmunge.so.2 is not installed: install the munge package") from None
        return _lib


class Munge:
    """Encode and decode credentials through the munged listening on `socket`."""

    def __init__(self, socket: str = DEFAULT_SOCKET):
        self.socket = socket

    def encode(self, payload: bytes = b"", ttl: int | None = None, *, decoder_uid: int | None = None) -> str:
        """A new credential for the calling process carrying `payload`; with
        `decoder_uid`, munged decodes it only for that uid (the payload stays secret)."""
        lib = _library()
        with self._context(lib) as ctx:
            if ttl is not None:
                err = lib.munge_ctx_set(ctx, _OPT_TTL, _ffi.cast("int", ttl))
                if err:
                    self._raise(lib, ctx, err, "configure")
            if decoder_uid is not None:
                err = lib.munge_ctx_set(ctx, _OPT_UID_RESTRICTION, _ffi.cast("uid_t", decoder_uid))
                if err:
                    self._raise(lib, ctx, err, "configure")
            cred = _ffi.new("char **")
            err = lib.munge_encode(cred, ctx, payload, len(payload))
            if err:
                self._raise(lib, ctx, err, "create")
            try:
                return _ffi.string(cred[0]).decode("ascii")
            finally:
                lib.free(cred[0])

    def decode(self, credential: str, *, allow_stale: bool = False) -> Credential:
        """Check `credential` and return its uid, gid and payload.

        `allow_stale` accepts expired and replayed credentials: only for
        reading something the caller stored itself (shifterimg's saved
        registry logins), never for authenticating a request.
        """
        lib = _library()
        try:
            text = credential.encode("ascii")
        except (UnicodeEncodeError, AttributeError):
            raise MungeError("the munge credential is not ASCII text: send the output of munge") from None
        with self._context(lib) as ctx:
            buf = _ffi.new("void **")
            length = _ffi.new("int *")
            uid = _ffi.new("uid_t *")
            gid = _ffi.new("gid_t *")
            err = lib.munge_decode(text, ctx, buf, length, uid, gid)
            try:
                payload = bytes(_ffi.buffer(buf[0], length[0])) if buf[0] != _ffi.NULL else b""
            finally:
                if buf[0] != _ffi.NULL:
                    lib.free(buf[0])
            stale = err in (_ERR_CRED_EXPIRED, _ERR_CRED_REPLAYED)
            if err and not (allow_stale and stale):
                self._raise(lib, ctx, err, "check")
            return Credential(uid=uid[0], gid=gid[0], payload=payload)

    @contextlib.contextmanager
    def _context(self, lib):
        ctx = lib.munge_ctx_create()
        if ctx == _ffi.NULL:
            raise MemoryError("munge_ctx_create failed")
        try:
            err = lib.munge_ctx_set(ctx, _OPT_SOCKET, _ffi.new("char[]", self.socket.encode()))
            if err:
                self._raise(lib, ctx, err, "configure")
            yield ctx
        finally:
            lib.munge_ctx_destroy(ctx)

    def _raise(self, lib, ctx, err: int, action: str):
        detail = lib.munge_ctx_strerror(ctx)
        detail = _ffi.string(detail).decode(errors="replace") if detail != _ffi.NULL else \
            _ffi.string(lib.munge_strerror(err)).decode(errors="replace")
        if err == _ERR_CRED_EXPIRED:
            raise CredentialExpired(
                "the munge credential has expired: check that the client's and the gateway's clocks agree")
        if err == _ERR_CRED_REPLAYED:
            raise CredentialReplayed("the munge credential was already used: create a new one for every request")
        if err == _ERR_CRED_REWOUND:
            raise MungeError("the munge credential was made in the future: synchronise the clocks")
        if err == _ERR_CRED_INVALID:
            raise MungeError(
                f"the munge credential is invalid: the client's munged and the one at {self.socket}"
                " must share the same key")
        if err == _ERR_BAD_CRED:
            raise MungeError("the authentication header is not a munge credential")
        if err == _ERR_SOCKET:
            raise MungeError(f"cannot reach munged at {self.socket}: start munged or fix the socket path ({detail})")
        raise MungeError(f"could not {action} the munge credential: {detail}")
