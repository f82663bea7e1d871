"""TLS contexts and sans-IO connections over the C core (csrc/core/tls.c, csrc/core/ringbio.c).

A ``TLSConnection`` runs over one of four transports, selectable for
side-by-side measurement:

``ring``  wsstls's ring BIO.  With a socket it reads with one readv straight
          into OpenSSL's buffer and writes records straight to the socket;
          its rings keep only what the kernel refuses or what arrives beyond
          OpenSSL's buffer.  Without a socket it is sans-IO: ``feed`` and
          ``take`` move ciphertext through its rings.
``mem``   two OpenSSL memory BIOs, the design of ``ssl.MemoryBIO`` /
          ``SSLObject`` (and of asyncio's SSL transport).
``pair``  ``BIO_new_bio_pair``, the design of the seed report.
``fd``    ``SSL_set_fd``: OpenSSL reads and writes the socket itself.

Hot-path calls are compound (one crossing into C): ``read_into`` receives and
decrypts into a ``RingBuffer``, ``write`` encrypts and sends.  Wanting to read
or write is a return value, not an exception: ``None`` from reads, ``0``
from ``write``, ``False`` from ``do_handshake``.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import socket
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, NoReturn

from ._cdata import TLS_WAITS, Buffer, TLSStatus, c_buffer, ffi, fileno, handle, lib
from ._cdata import index as _index
from .ring import RingBuffer

__all__ = [
    "Crypto",
    "CryptoCounters",
    "SelfSigned",
    "TLSConnection",
    "TLSContext",
    "TLSEOFError",
    "TLSError",
    "TLSLedger",
    "TLSVersion",
    "Transport",
    "crypto_counters",
    "openssl_version",
    "reset_crypto_counters",
    "self_signed",
]


class TLSError(Exception):
    """A TLS failure: protocol error, failed verification, or socket error.

    The message carries OpenSSL's reason strings (and the certificate
    verification result when that failed); a context that cannot use its
    certificate, key or CA says why in a sentence, OpenSSL's reasons after it
    in parentheses."""


class TLSEOFError(TLSError):
    """The transport ended without the peer's close_notify (a truncation)."""


class TLSVersion(enum.IntEnum):
    TLSv1_2 = lib.TLS1_2_VERSION
    TLSv1_3 = lib.TLS1_3_VERSION


class Transport(str, enum.Enum):
    """How ciphertext reaches the SSL object (see the module docstring)."""

    RING = "ring"
    MEM = "mem"
    PAIR = "pair"
    FD = "fd"


class Crypto(str, enum.Enum):
    """Where a context's records are sealed and opened.

    ``inline``  on the calling thread, by OpenSSL's provider (the default);
    ``async``   OpenSSL ASYNC jobs: a record of at least the context's
                ``offload_threshold`` bytes pauses the SSL call while a crypto
                pool worker seals or opens it (``TLSConnection.want_async``);
                smaller records stay inline.
    """

    INLINE = "inline"
    ASYNC = "async"


MAX_PIPELINES = 32  # SSL_MAX_PIPELINES
_TLS_RECORD = 16384  # the largest plaintext of one record

_TRANSPORT_CODE = {
    Transport.RING: lib.TLS_RING,
    Transport.MEM: lib.TLS_MEM,
    Transport.PAIR: lib.TLS_PAIR,
    Transport.FD: lib.TLS_FD,
}

#: The record paths a context may choose (TLSContext's ``records``).
RECORDS = ("openssl", "direct")
_RECORDS_COUNTERS = [name for name, _ in ffi.typeof("struct records_counters").fields]

_ALL = 1 << 62  # write_from: "every readable byte" (more than any ring holds)
_read_ring = lib.tls_read_ring
_write = lib.tls_write
_write_ring = lib.tls_write_ring


def _last_error(default: str) -> str:
    buf = ffi.new("char[]", 512)
    n = lib.tls_last_error(buf, len(buf))
    return ffi.string(buf, n).decode("utf-8", "replace") if n else default


def _explained(sentence: str) -> TLSError:
    """``sentence`` for a person, OpenSSL's reasons (its error queue) after it."""
    reasons = "; ".join(dict.fromkeys(_last_error("").split("; ")))  # once each
    return TLSError(f"{sentence} (OpenSSL: {reasons})" if reasons else sentence)


_PEM_MAX = 16 << 20  # no certificate chain or key is larger


def _read_pem(path: str | os.PathLike[str], name: str) -> bytes:
    """A PEM file's bytes; OSError (FileNotFoundError, ...) as open() raises it."""
    _path(path, name)  # TypeError for what is not a path
    with open(path, "rb") as f:
        data = f.read(_PEM_MAX + 1)
    if len(data) > _PEM_MAX:
        raise TLSError(f"{name} {os.fsdecode(path)!r} is over 16 MiB: not a PEM file")
    return data


def _use_pem(ctx: Any, chain: bytes, key: bytes, chain_is: str, key_is: str) -> None:
    """Load a certificate chain and its key into ``ctx``; TLSError says what is wrong."""
    result = lib.tls_ctx_use_pem(ctx, chain, len(chain), key, len(key))
    if result == lib.TLS_PEM_OK:
        return
    if result == lib.TLS_PEM_BAD_CHAIN:
        raise _explained(f"no certificate could be read from {chain_is}: it must hold PEM "
                         "certificates, the server's first")  # fmt: skip
    if result == lib.TLS_PEM_BAD_KEY and b"ENCRYPTED" in key:
        raise _explained(f"the private key in {key_is} is encrypted with a passphrase, which "
                         "wsstls does not ask for: give it unencrypted")  # fmt: skip
    if result == lib.TLS_PEM_BAD_KEY:
        raise _explained(f"no private key could be read from {key_is}: it must hold a PEM "
                         "private key")  # fmt: skip
    if result == lib.TLS_PEM_KEY_MISMATCH:
        raise _explained(f"the private key in {key_is} is not the key of the certificate "
                         f"in {chain_is}")  # fmt: skip
    raise _explained("cannot use the certificate and key")


def _pem(value: bytes | str, name: str) -> bytes:
    if isinstance(value, str):
        return value.encode("ascii")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{name} must be PEM bytes or str, not {type(value).__name__}")


def _str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    return value


def _version(value: object, name: str) -> TLSVersion:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a TLSVersion, not {type(value).__name__}")
    try:
        return TLSVersion(value)
    except ValueError:
        raise ValueError(
            f"{name} must be one of {[v.name for v in TLSVersion]}, got {value!r}"
        ) from None


def _path(value: str | os.PathLike[str], name: str) -> bytes:
    try:
        return os.fsencode(value)
    except TypeError:
        raise TypeError(f"{name} must be a path, not {type(value).__name__}") from None


# ------------------------------------------------------------------ contexts


@dataclass(frozen=True)
class SelfSigned:
    """A certificate and its private key, PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes


def openssl_version() -> str:
    """The OpenSSL wsstls runs with, e.g. "OpenSSL 3.0.19 27 Jan 2026" (it may differ from the
    one Python's ``ssl`` module reports)."""
    return str(ffi.string(lib.tls_openssl_version()).decode("ascii", "replace"))


def self_signed(name: str = "localhost", bits: int = 2048, days: int = 30) -> SelfSigned:
    """Make an RSA self-signed certificate for ``name`` in memory (OpenSSL's API).

    The subject alternative name is ``IP:name`` when ``name`` is an address,
    else ``DNS:name``.  Raises TLSError if OpenSSL fails.
    """
    if not isinstance(name, str) or not name:
        raise TypeError("name must be a non-empty str")
    if _index(bits, "bits") < 1024:
        raise ValueError(f"bits must be at least 1024, got {bits}")
    if _index(days, "days") < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    cert, cert_len = ffi.new("char **"), ffi.new("size_t *")
    key, key_len = ffi.new("char **"), ffi.new("size_t *")
    if not lib.tls_self_signed(name.encode(), bits, days, cert, cert_len, key, key_len):
        raise TLSError(_last_error("cannot make a self-signed certificate"))
    try:
        return SelfSigned(ffi.buffer(cert[0], cert_len[0])[:], ffi.buffer(key[0], key_len[0])[:])
    finally:
        lib.tls_free(cert[0])
        lib.tls_free(key[0])


def _alpn_wire(protocols: Sequence[str]) -> bytes:
    if isinstance(protocols, str | bytes | bytearray):
        raise TypeError(f"alpn must be a sequence of names, not one {type(protocols).__name__}")
    wire = bytearray()
    for p in protocols:
        if not isinstance(p, str | bytes):
            raise TypeError(f"alpn names must be str or bytes, not {type(p).__name__}")
        b = p.encode("ascii") if isinstance(p, str) else p
        if not 0 < len(b) < 256:
            raise ValueError(f"ALPN protocol names must be 1-255 bytes, got {p!r}")
        wire += bytes([len(b)]) + b
    return bytes(wire)


def _record_settings(
    pipelines: int, split: int | None, max_fragment: int | None, read_buffer: int | None
) -> tuple[int, int, int, int]:
    """The record knobs checked, as tls_ctx_set_records takes them (0 = OpenSSL's default)."""
    if not 0 <= _index(pipelines, "pipelines") <= MAX_PIPELINES:
        raise ValueError(f"pipelines must be 0 .. {MAX_PIPELINES}, got {pipelines}")
    top = _TLS_RECORD if max_fragment is None else _index(max_fragment, "max_send_fragment")
    if not 512 <= top <= _TLS_RECORD:
        raise ValueError(f"max_send_fragment must be 512 .. {_TLS_RECORD}, got {max_fragment}")
    if split is not None and not 512 <= _index(split, "split_send_fragment") <= top:
        raise ValueError(f"split_send_fragment must be 512 .. {top}, got {split}")
    if read_buffer is not None and not 0 <= _index(read_buffer, "read_buffer_len") <= 1 << 24:
        raise ValueError(f"read_buffer_len must be 0 .. 16 MiB, got {read_buffer}")
    return pipelines, split or 0, max_fragment or 0, read_buffer or 0


class TLSContext:
    """Settings shared by connections: role, certificate, trust, versions, ALPN, records.

    ``records="direct"`` (the default): after the handshake, connections over
    the ring transport seal and open TLS 1.3 records with wsstls's own record
    layer (OpenSSL's AEAD, straight between the rings); TLS 1.2, other suites,
    other transports, ASYNC crypto and rings smaller than a record stay on
    OpenSSL's records (``TLSConnection.records`` and ``records_reason`` say
    which, and why).  ``records="openssl"``: OpenSSL's records always.

    ``verify`` defaults to True for a client (the server's certificate and
    name are checked against ``cafile``/``cadata``, or the system's CA
    paths) and to False for a server (no client certificate asked for).
    A server context needs a certificate and its key (else ValueError).
    Raises TLSError saying what is wrong with a certificate, key or CA (not
    PEM, an encrypted key, a key that is not the certificate's), and OSError
    (FileNotFoundError, PermissionError, ...) for a file it cannot read.

    Record knobs: ``pipelines`` (OpenSSL's max_pipelines, 0-32: above 1 a
    TLS 1.2 AES-GCM connection seals up to that many records of one write in
    one cipher call, in parallel on wsstls's crypto pool, and opens as many
    per call when they arrived together; TLS 1.3 stays at one record per
    call), ``split_send_fragment`` and ``max_send_fragment`` (bytes per
    pipelined record, and per record; 512-16384), ``read_buffer_len``
    (OpenSSL's default read buffer, bytes).  ``crypto`` (see Crypto) with
    ``offload_threshold`` (bytes) chooses ASYNC jobs; ``crypto_threads`` sizes
    the crypto pool when this context starts it (default: one less than the
    usable CPUs).  The pipelined cipher and the ASYNC provider are selected
    for these contexts only: no other SSL context in the process (Python's
    ``ssl`` included) sees them.
    """

    def __init__(
        self,
        server: bool,
        *,
        certfile: str | os.PathLike[str] | None = None,
        keyfile: str | os.PathLike[str] | None = None,
        cert_pem: bytes | str | None = None,
        key_pem: bytes | str | None = None,
        verify: bool | None = None,
        cafile: str | os.PathLike[str] | None = None,
        cadata: bytes | str | None = None,
        alpn: Sequence[str] = (),
        min_version: TLSVersion = TLSVersion.TLSv1_2,
        max_version: TLSVersion = TLSVersion.TLSv1_3,
        ciphers: str | None = None,
        ciphersuites: str | None = None,
        num_tickets: int | None = None,
        pipelines: int = 0,
        split_send_fragment: int | None = None,
        max_send_fragment: int | None = None,
        read_buffer_len: int | None = None,
        crypto: Crypto | str = Crypto.INLINE,
        offload_threshold: int = _TLS_RECORD,
        crypto_threads: int | None = None,
        records: str = "direct",
    ) -> None:
        if not isinstance(server, bool):
            raise TypeError(f"server must be a bool, not {type(server).__name__}")
        sizes = _record_settings(pipelines, split_send_fragment, max_send_fragment,
                                   read_buffer_len)  # fmt: skip
        try:
            self.crypto = Crypto(crypto)
        except ValueError:
            raise ValueError(
                f"crypto must be one of {[c.value for c in Crypto]}, got {crypto!r}"
            ) from None
        if _index(offload_threshold, "offload_threshold") < 0:
            raise ValueError(f"offload_threshold must be at least 0, got {offload_threshold}")
        threads = 0 if crypto_threads is None else _index(crypto_threads, "crypto_threads")
        if crypto_threads is not None and not 1 <= threads <= 256:
            raise ValueError(f"crypto_threads must be 1 .. 256 (or None), got {crypto_threads}")
        self.pipelines = sizes[0]
        self.offload_threshold = offload_threshold
        flags = (lib.TLS_CRYPTO_PIPELINE if self.pipelines else 0) | (
            lib.TLS_CRYPTO_ASYNC if self.crypto is Crypto.ASYNC else 0
        )
        raw = lib.tls_ctx_new_crypto(server, flags, threads, offload_threshold)
        if raw == ffi.NULL:
            raise TLSError(_last_error("SSL_CTX_new failed"))
        self._handle = ffi.gc(raw, lib.tls_ctx_free)
        self.server = server
        self.certificate_pem: bytes | None = None
        if (certfile is None) != (keyfile is None) or (cert_pem is None) != (key_pem is None):
            raise ValueError("a certificate needs its key: give both certfile and keyfile, "
                             "or both cert_pem and key_pem")  # fmt: skip
        if certfile is not None and cert_pem is not None:
            raise ValueError("give the certificate as files or as PEM, not both")
        if certfile is not None and keyfile is not None:
            chain, key = _read_pem(certfile, "certfile"), _read_pem(keyfile, "keyfile")
            chain_is = f"the certificate file {os.fsdecode(certfile)!r}"
            _use_pem(raw, chain, key, chain_is, f"the key file {os.fsdecode(keyfile)!r}")
            self.certificate_pem = chain
        elif cert_pem is not None and key_pem is not None:
            chain, key = _pem(cert_pem, "cert_pem"), _pem(key_pem, "key_pem")
            _use_pem(raw, chain, key, "cert_pem", "key_pem")
            self.certificate_pem = chain
        if verify is None:
            verify = not server
        elif not isinstance(verify, bool):
            raise TypeError(f"verify must be a bool or None, not {type(verify).__name__}")
        ca = None if cadata is None else _pem(cadata, "cadata")
        ca_file = ffi.NULL if cafile is None else _path(cafile, "cafile")
        if cafile is not None and verify:
            with open(cafile, "rb"):  # OSError as open() raises it, not OpenSSL's fopen jargon
                pass
        if not lib.tls_ctx_set_verify(raw, bool(verify), ca_file, ca or ffi.NULL, len(ca or b"")):
            where = "cadata" if cafile is None else f"the CA file {os.fsdecode(cafile)!r}"
            if cafile is None and cadata is None:
                where = "the system's CA paths"
            raise _explained(f"cannot load the trusted certificates from {where}")
        self.verify = bool(verify)
        min_version = _version(min_version, "min_version")
        max_version = _version(max_version, "max_version")
        if min_version > max_version:
            raise ValueError(
                f"min_version {min_version.name} is above max_version {max_version.name}"
            )
        if not lib.tls_ctx_set_versions(raw, min_version, max_version):
            raise _explained(f"cannot set versions {min_version.name}-{max_version.name}")
        if alpn:
            wire = _alpn_wire(alpn)
            if not lib.tls_ctx_set_alpn(raw, wire, len(wire)):
                raise _explained("cannot set ALPN")
        if ciphers is not None or ciphersuites is not None:
            c12 = ffi.NULL if ciphers is None else _str(ciphers, "ciphers").encode()
            c13 = ffi.NULL if ciphersuites is None else _str(ciphersuites, "ciphersuites").encode()
            if not lib.tls_ctx_set_ciphers(raw, c12, c13):
                raise _explained("no usable cipher in the lists given")
        if num_tickets is not None:
            if _index(num_tickets, "num_tickets") < 0:
                raise ValueError(f"num_tickets must be at least 0, got {num_tickets}")
            lib.tls_ctx_set_num_tickets(raw, num_tickets)
        if any(sizes) and not lib.tls_ctx_set_records(raw, *sizes):
            raise TLSError(_last_error(f"cannot set the record sizes {sizes}"))
        if not isinstance(records, str):
            raise TypeError(f"records must be a str, not {type(records).__name__}")
        if records not in RECORDS:
            raise ValueError(f"records must be one of {', '.join(RECORDS)}, got {records!r}")
        lib.tls_ctx_set_record_path(raw, records == "direct")
        self.records = records
        if server and self.certificate_pem is None:  # checked last: argument errors come first
            raise ValueError(
                "a server context needs a certificate and its key: certfile= and keyfile=, "
                "or cert_pem= and key_pem= (or TLSContext.server_self_signed())"
            )

    @classmethod
    def server_self_signed(cls, name: str = "localhost", **kwargs: Any) -> TLSContext:
        """A server context with a fresh in-memory RSA 2048 certificate for ``name``.

        Its PEM is ``certificate_pem``: give it to clients as ``cadata``.
        """
        pair = self_signed(name)
        return cls(True, cert_pem=pair.cert_pem, key_pem=pair.key_pem, **kwargs)

    def connection(
        self,
        sock: socket.socket | int | None = None,
        *,
        transport: Transport | str = Transport.RING,
        server_hostname: str | None = None,
        ring_capacity: int = 65536,
        read_ahead: bool | None = None,
        via_ring: bool = False,
        mirrored: bool = False,
        caller_io: bool = False,
    ) -> TLSConnection:
        """A connection; see TLSConnection."""
        return TLSConnection(
            self,
            sock,
            transport=transport,
            server_hostname=server_hostname,
            ring_capacity=ring_capacity,
            read_ahead=read_ahead,
            via_ring=via_ring,
            mirrored=mirrored,
            caller_io=caller_io,
        )


# --------------------------------------------------------------- connections


@dataclass(frozen=True)
class TLSLedger:
    """What one connection moved, as counted by wsstls (see csrc/core/tls.h)."""

    rx_syscalls: int
    rx_bytes: int
    rx_direct: int
    tx_syscalls: int
    tx_bytes: int
    tx_direct: int
    eagain: int
    ring_copies: int
    ring_bytes: int
    bio_copies: int
    bio_bytes: int
    plain_in: int
    plain_out: int
    reads: int
    writes: int


_LEDGER_FIELDS = [f.name for f in fields(TLSLedger)]


class TLSConnection:
    """One TLS session, sans-IO or driving a non-blocking socket.

    With ``sock`` (a non-blocking socket or fd; the caller keeps owning it)
    the compound calls do the socket I/O.  Without it, move ciphertext with ``feed``,
    ``feed_eof`` and ``take`` (``ring``, ``mem`` and ``pair`` only).

    ``read_ahead`` (default: on for ``ring`` and for pipelined contexts, off
    otherwise, as in CPython) lets OpenSSL read several records per call.  ``via_ring`` makes the
    ``ring`` transport pass every byte through its rings instead of the socket
    going straight to OpenSSL's buffers (to measure the difference).
    """

    def __init__(
        self,
        context: TLSContext,
        sock: socket.socket | int | None = None,
        *,
        transport: Transport | str = Transport.RING,
        server_hostname: str | None = None,
        ring_capacity: int = 65536,
        read_ahead: bool | None = None,
        via_ring: bool = False,
        mirrored: bool = False,
        caller_io: bool = False,
    ) -> None:
        if not isinstance(context, TLSContext):
            raise TypeError(f"context must be a TLSContext, not {type(context).__name__}")
        try:
            self.transport = Transport(transport)
        except ValueError:
            raise ValueError(
                f"transport must be one of {[t.value for t in Transport]}, got {transport!r}"
            ) from None
        try:
            fd = -1 if sock is None else fileno(sock)
        except TypeError:
            raise TypeError(
                f"sock must be a socket, an fd or None, not {type(sock).__name__}"
            ) from None
        if sock is not None and fd < 0:
            raise ValueError(f"sock: {fd} is not a file descriptor")
        if fd >= 0:
            try:
                blocking = os.get_blocking(fd)
            except OSError as exc:
                raise ValueError(f"sock: fd {fd} is not open ({exc.strerror})") from None
            if blocking:  # a blocking socket would block inside OpenSSL, with no way out
                raise ValueError("sock must be non-blocking: call sock.setblocking(False) first")
        if self.transport is Transport.FD and fd < 0:
            raise ValueError("the fd transport needs a socket")
        ring_capacity = _index(ring_capacity, "ring_capacity")
        if not 1 <= ring_capacity <= 1 << 30:
            raise ValueError(f"ring_capacity must be 1 .. 2**30, got {ring_capacity}")
        if server_hostname is not None:
            if context.server:
                raise ValueError("server_hostname is for client connections")
            if not isinstance(server_hostname, str) or not server_hostname:
                raise TypeError("server_hostname must be a non-empty str")
        elif context.verify and not context.server:
            raise ValueError("a verifying client needs server_hostname (or verify=False)")
        if read_ahead is None:  # pipelined reads need several records at once
            read_ahead = self.transport is Transport.RING or context.pipelines > 1
        flags = (
            (lib.TLS_READ_AHEAD if read_ahead else 0)
            | (lib.TLS_RING_VIA_RING if via_ring else 0)
            | (lib.TLS_MIRRORED_RINGS if mirrored else 0)
            | (lib.TLS_CALLER_IO if caller_io else 0)
        )
        if caller_io and (self.transport is not Transport.RING or fd < 0):
            raise ValueError("caller_io is for the ring transport over a socket")
        host = ffi.NULL if server_hostname is None else _host_bytes(server_hostname)
        raw = lib.tls_conn_new(
            handle(context), _TRANSPORT_CODE[self.transport], fd, ring_capacity, flags, host
        )
        if raw == ffi.NULL:
            raise TLSError(_last_error("cannot create the connection"))
        self._handle = ffi.gc(raw, lib.tls_conn_free)
        self.context = context
        self._sock = sock  # keeps a socket object (and so its fd) alive
        self._async = context.crypto is Crypto.ASYNC
        # ASYNC: the buffer a paused call reads into or writes from (OpenSSL
        # resumes it with that memory), kept alive until the call is done.
        self._box: list[Any] = [None]
        # Writes shorter than this cannot pause (tls.c: a record's bytes, at most 24 more
        # per record of a 32-record batch, below the threshold run out of any job).
        self._unpaused_below = context.offload_threshold - 32 * 24
        self._finalizer: weakref.finalize[Any, Any] | None = None
        if self._async:  # collected while a call is paused: that call is finished first
            self._finalizer = weakref.finalize(self, _finish_paused, self._handle, self._box)
        self.server_hostname = server_hostname
        self._handshaken = False

    # ------------------------------------------------------------ errors

    def _raise(self, status: int) -> NoReturn:
        message = ffi.string(lib.tls_conn_error(self._handle)).decode("utf-8", "replace")
        if status == TLSStatus.EOF:
            raise TLSEOFError(message or "the transport ended without close_notify")
        raise TLSError(message or f"TLS error (status {status})")

    def _read_status(self, status: int) -> int | None:
        """A read's status: None to wait, 0 for close_notify, else raises."""
        if status in TLS_WAITS:
            return None
        if status == TLSStatus.CLOSED:
            return 0
        self._raise(status)

    def _write_status(self, status: int) -> int:
        """A write's status: 0 to wait, else raises."""
        if status in TLS_WAITS:
            return 0
        self._raise(status)

    @property
    def _hold(self) -> Any:
        return self._box[0]

    @_hold.setter
    def _hold(self, obj: Any) -> None:
        self._box[0] = obj

    def _live(self) -> Any:
        if self._handle is None:
            raise ValueError("operation on a closed TLSConnection")
        return self._handle

    def _resuming(self, op: int, obj: object) -> None:
        """ASYNC: a paused read (or ring write) must resume with the memory it started with."""
        # (_hold is None: the call paused in C, the server's loop, on memory of its own)
        held = self._box[0]
        if held is None:  # nothing of ours is paused (a C call is not needed to say so)
            return
        if lib.tls_async_paused(self._live()) == op and held is not obj:
            what = "read" if op == lib.TLS_OP_READ else "write"
            raise ValueError(f"a paused {what} resumes with the buffer it started with")

    def _held(self, op: int, obj: object) -> None:
        """ASYNC, after a call of ``op``: keep ``obj`` alive while that call is paused."""
        paused = lib.tls_async_paused(self._handle)
        if paused == op:
            self._hold = obj
        elif paused == lib.TLS_OP_NONE:
            self._hold = None

    # --------------------------------------------------------- handshake

    def do_handshake(self) -> bool:
        """Advance the handshake: True when complete, False when it must wait for I/O.

        Raises TLSError (with OpenSSL's reason, e.g. a verification failure)
        or TLSEOFError.
        """
        status = lib.tls_handshake(self._live())
        if status == 0:
            self._handshaken = True
            return True
        if status in TLS_WAITS:
            return False
        self._raise(status)

    @property
    def handshake_done(self) -> bool:
        """True once do_handshake() returned True."""
        return self._handshaken

    # ------------------------------------------------------------- reads

    def read_into(self, ring: RingBuffer) -> int | None:
        """Receive and decrypt everything available into ``ring`` (one C call).

        Returns the plaintext bytes added; None when there were none and the
        connection must wait to read; 0 when the peer sent close_notify (or
        ``ring`` is full).  Raises TLSEOFError on a truncated stream and
        TLSError on any other failure.
        """
        if self._async:
            self._resuming(lib.TLS_OP_READ, ring)
        try:
            got = _read_ring(self._handle, handle(ring))
        except (TypeError, ValueError):
            self._live()
            if not isinstance(ring, RingBuffer):
                raise TypeError(f"ring must be a RingBuffer, not {type(ring).__name__}") from None
            if ring.closed:
                raise ValueError("read_into: the ring is closed") from None
            raise
        if self._async:
            self._held(lib.TLS_OP_READ, ring)
        return got if got >= 0 else self._read_status(got)

    def readinto(self, buffer: Buffer) -> int | None:
        """Decrypt into a writable buffer: bytes, None (want read), 0 (close_notify).

        ASYNC contexts: a read that paused (``want_async``) resumes into the same
        buffer; pass that one again (a different one raises ValueError).
        """
        dst = c_buffer(buffer, "buffer", writable=True)
        c = self._live()
        if self._async:
            self._resuming(lib.TLS_OP_READ, buffer)
        got = lib.tls_read(c, dst, len(dst))
        if self._async and (got <= 0 or self._box[0] is not None):  # (a read that gave
            self._held(lib.TLS_OP_READ, buffer)  # bytes did not pause: one call, done)
        return got if got >= 0 else self._read_status(got)

    def read(self, n: int = 16384) -> bytes | None:
        """Decrypt up to ``n`` bytes: bytes, None (want read), b"" (close_notify)."""
        n = _index(n, "n")
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        buf = bytearray(n)
        if self._async and lib.tls_async_paused(self._live()) == lib.TLS_OP_READ:
            buf = self._hold  # a read() that paused: its own buffer resumes
            if type(buf) is not bytearray:
                raise ValueError("a paused read resumes with the buffer it started with")
        got = self.readinto(buf)
        return None if got is None else bytes(memoryview(buf)[:got])

    # ------------------------------------------------------------ writes

    def write(self, data: Buffer) -> int:
        """Encrypt (and, with a socket, send) ``data``: the bytes accepted.

        Fewer than ``len(data)`` - possibly 0 - under backpressure: call again
        with the rest when ``flush()`` has made room (for the ``fd`` transport,
        retry with the same bytes).  Raises TLSError on failure.
        """
        if type(data) is not bytes:
            data = c_buffer(data, "data", writable=False)
            if self._async and len(data) >= self._unpaused_below:  # a paused write reads
                data = ffi.buffer(data)[:]  # this memory later: a copy of ours, so the
                # caller may resize its buffer (shorter writes run out of jobs: no pause)
        try:
            put = _write(self._handle, data, len(data))
        except TypeError:
            self._live()
            raise
        if self._async and (put != len(data) or self._box[0] is not None):  # (all written:
            self._held(lib.TLS_OP_WRITE, data)  # nothing paused) a paused write: keep it
        return put if put >= 0 else self._write_status(put)

    def write_from(self, ring: RingBuffer, n: int = -1) -> int:
        """Encrypt (and send) up to ``n`` readable bytes of ``ring`` (all when n < 0)
        straight from its memory, and consume what was accepted; returns that count.

        One C call and no copy in Python: the echo path of a server.  Fewer
        bytes - possibly 0 - under backpressure; raises TLSError on failure.
        """
        if self._async:
            self._resuming(lib.TLS_OP_WRITE, ring)
        try:
            put = _write_ring(self._handle, handle(ring), _ALL if n < 0 else n)
        except (TypeError, ValueError):
            self._live()
            if not isinstance(ring, RingBuffer):
                raise TypeError(f"ring must be a RingBuffer, not {type(ring).__name__}") from None
            if ring.closed:
                raise ValueError("write_from: the ring is closed") from None
            raise TypeError(f"n must be an int, not {type(n).__name__}") from None
        if self._async:
            self._held(lib.TLS_OP_WRITE, ring)
        return put if put >= 0 else self._write_status(put)

    def key_update(self, request: bool = False) -> None:
        """TLS 1.3 KeyUpdate: new write keys; ``request`` asks the peer to update too."""
        if not isinstance(request, bool):
            raise TypeError(f"request must be a bool, not {type(request).__name__}")
        status = lib.tls_key_update(self._live(), request)
        if status < 0 and status not in TLS_WAITS:
            self._raise(status)

    def fill(self) -> int | None:
        """Read what the socket holds into the incoming ring (``ring``): bytes,
        0 when the ring is full, None when the socket had nothing.  Raises
        TLSEOFError at the end of the stream, TLSError on a socket error."""
        got: int = lib.tls_fill(self._live())
        if got >= 0:
            return got
        if got == TLSStatus.WANT_READ:
            return None
        if got == TLSStatus.EOF:
            raise TLSEOFError("the peer closed the connection")
        raise TLSError(os.strerror(self.errno) if self.errno else "socket error")

    def flush(self) -> int:
        """Send queued ciphertext: bytes sent (0: nothing sent, see ``pending_out``)."""
        sent = lib.tls_flush(self._live())
        return sent if sent >= 0 else self._write_status(sent)

    @property
    def pending_out(self) -> int:
        """Ciphertext queued for the peer (with a socket: wait for writable, then flush)."""
        return int(lib.tls_pending_out(self._live()))

    @property
    def has_pending(self) -> bool:
        """True when a read would make progress without the socket (data already
        taken from it is buffered in OpenSSL or the transport): read again before
        waiting for the socket to be readable."""
        return bool(lib.tls_has_pending(self._live()))

    def park(self) -> bool:
        """Give back the buffers an idle connection does not need (its ciphertext rings or
        pump buffers, OpenSSL's record buffers): True when parked, False when bytes are in
        flight (or the handshake is not done, or the connection failed).  The next read or
        write takes them again by itself."""
        return bool(lib.tls_park(self._live()))

    @property
    def parked(self) -> bool:
        """True while the connection's buffers are given back (see ``park``)."""
        return bool(lib.tls_parked(self._live()))

    @property
    def want_async(self) -> bool:
        """True while an ASYNC job holds a paused call of this connection: wait until
        ``async_fd`` is readable, then repeat that call (see tls.h)."""
        return self._async and lib.tls_async_paused(self._live()) != lib.TLS_OP_NONE

    @property
    def async_fd(self) -> int:
        """The fd to wait on while ``want_async`` (-1 for a context not ASYNC)."""
        return int(lib.tls_async_fd(self._live()))

    def async_stats(self) -> dict[str, int]:
        """This connection's ASYNC counters: pauses, resumes, want_async, offloaded,
        inline_ops, job_calls (SSL calls run in an ASYNC job) and direct_calls (SSL calls
        kept out of jobs: nothing to offload); zeros for a context not ASYNC."""
        out = ffi.new("struct tls_async_stats *")
        lib.tls_async_stats(self._live(), out)
        names = ("pauses", "resumes", "want_async", "offloaded", "inline_ops", "job_calls",
                 "direct_calls")  # fmt: skip
        return {k: getattr(out, k) for k in names}

    def shutdown(self) -> bool:
        """Send close_notify; True when the peer's close_notify was received as well."""
        status: int = lib.tls_shutdown(self._live())
        if status >= 0:
            return status == 1
        if status in TLS_WAITS:
            return False
        self._raise(status)

    # ----------------------------------------------------------- sans-IO

    def _sans_io(self) -> Any:
        c = self._live()
        if self.transport is Transport.FD:
            raise ValueError("the fd transport has no sans-IO: OpenSSL uses the socket itself")
        return c

    def feed(self, data: Buffer) -> int:
        """Give ciphertext received from the peer; returns how much was taken."""
        src = data if type(data) is bytes else c_buffer(data, "data", writable=False)
        return int(lib.tls_feed(self._sans_io(), src, len(src)))

    def feed_eof(self) -> None:
        """Tell the connection the peer's stream has ended."""
        lib.tls_feed_eof(self._sans_io())

    def take(self, n: int = -1) -> bytes:
        """Remove and return up to ``n`` bytes (all when n < 0) of ciphertext for the peer."""
        c = self._sans_io()
        n = _index(n, "n")
        pending = lib.tls_pending_out(c)
        if n < 0 or n > pending:
            n = pending
        if n == 0:
            return b""
        buf = ffi.new("char[]", n)
        return bytes(ffi.buffer(buf, lib.tls_take(c, buf, n)))

    # -------------------------------------------------------------- info

    @property
    def version(self) -> str | None:
        """The negotiated protocol version ("TLSv1.3"), None before the handshake."""
        v = lib.tls_version(self._live())
        return None if v == ffi.NULL else ffi.string(v).decode()

    @property
    def cipher(self) -> str | None:
        """The negotiated cipher suite, None before the handshake."""
        v = lib.tls_cipher(self._live())
        return None if v == ffi.NULL else ffi.string(v).decode()

    @property
    def alpn_protocol(self) -> str | None:
        """The ALPN protocol both sides chose, or None."""
        buf = ffi.new("char[]", 255)
        n = lib.tls_alpn(self._live(), buf, 255)
        return ffi.buffer(buf, n)[:].decode("ascii", "replace") if n else None

    @property
    def peer_certificate(self) -> bytes | None:
        """The peer's certificate (DER), or None."""
        der = ffi.new("unsigned char **")
        n = lib.tls_peer_cert(self._live(), der)
        if n == 0:
            return None
        try:
            return bytes(ffi.buffer(der[0], n))
        finally:
            lib.tls_free(der[0])

    @property
    def records(self) -> str:
        """Who seals and opens records: "openssl", "direct", or "handover" until
        a direct context's handshake is done."""
        return str(ffi.string(lib.tls_records(self._live())).decode())

    @property
    def records_reason(self) -> str:
        """Why a direct context's connection stayed on OpenSSL's records ("" if not)."""
        return str(ffi.string(lib.tls_records_why(self._live())).decode())

    def records_counters(self) -> dict[str, int]:
        """The direct record layer's counters (zeros on OpenSSL's records)."""
        out = ffi.new("struct records_counters *")
        lib.tls_records_counters(self._live(), out)
        return {name: int(getattr(out, name)) for name in _RECORDS_COUNTERS}

    @property
    def session_reused(self) -> bool:
        return bool(lib.tls_session_reused(self._live()))

    @property
    def errno(self) -> int:
        """errno of the last socket failure (0 if none)."""
        return int(lib.tls_conn_errno(self._live()))

    def ledger(self) -> TLSLedger:
        """System calls, kernel bytes and copies this connection made so far."""
        out = ffi.new("struct tls_ledger *")
        lib.tls_get_ledger(self._live(), out)
        return TLSLedger(*(getattr(out, f) for f in _LEDGER_FIELDS))

    def reset_ledger(self) -> None:
        lib.tls_reset_ledger(self._live())

    # ---------------------------------------------------------- lifetime

    def close(self) -> None:
        """Free the SSL object now (does not send close_notify or close the socket).

        A call paused in an ASYNC job is completed first, while its buffer is alive."""
        if self._finalizer is not None:
            self._finalizer()  # finishes a paused call, lets the handle go
            self._finalizer = None
        self._handle = None
        self._hold = None
        self._sock = None

    def __enter__(self) -> TLSConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._handle is None:
            return "<TLSConnection closed>"
        side = "server" if self.context.server else "client"
        return f"<TLSConnection {side} {self.transport.value} {self.version or 'handshaking'}>"


@dataclass(frozen=True)
class CryptoCounters:
    """Process-wide counters of the pipelined cipher, the ASYNC jobs and the crypto pool.

    ``cipher_*``: calls of the pipeline-capable cipher, records in them, the
    most in one call, and ``records_hist`` (records per call: 1, 2, 3-4, 5-8,
    9-16, 17-32).  ``pauses``/``resumes``: ASYNC jobs paused and resumed;
    ``want_async``: SSL calls that returned for it; ``offloaded``/``inline_ops``:
    crypto calls that paused or stayed inline; ``job_calls``/``direct_calls``:
    SSL calls of ASYNC connections run in a job or kept out of one (nothing
    to offload).  ``worker_ns``: time pool workers spent sealing/opening;
    ``wait_ns``: time callers waited for them.
    """

    cipher_calls: int
    cipher_records: int
    cipher_max_records: int
    records_hist: tuple[int, ...]
    parallel_calls: int
    async_cipher_calls: int
    pauses: int
    resumes: int
    inline_ops: int
    offloaded: int
    want_async: int
    pool_threads: int
    dispatches: int
    worker_tasks: int
    caller_tasks: int
    worker_ns: int
    wait_ns: int
    job_calls: int
    direct_calls: int


def crypto_counters() -> CryptoCounters:
    """The process's crypto counters now (see CryptoCounters)."""
    out = ffi.new("struct tls_crypto_counters *")
    lib.tls_crypto_counters(out)
    values = {f.name: getattr(out, f.name) for f in fields(CryptoCounters)}
    values["records_hist"] = tuple(out.records_hist)
    return CryptoCounters(**values)


def reset_crypto_counters() -> None:
    """Zero the process's crypto counters."""
    lib.tls_crypto_reset_counters()


def _finish_paused(conn: Any, box: list[Any]) -> None:
    """An ASYNC connection closed or collected: a paused call is completed while its
    buffer (``box``) is alive; the job would never run again otherwise."""
    lib.tls_async_finish(conn)
    box[0] = None


def _host_bytes(name: str) -> bytes:
    try:
        return str(ipaddress.ip_address(name)).encode()
    except ValueError:
        return name.encode("idna")
