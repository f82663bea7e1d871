"""What the bench/ scripts that start their own servers share: an ECDSA certificate
(cheap handshakes, for many connections) and a process's resident memory."""

from __future__ import annotations

import subprocess
from pathlib import Path


def ecdsa_cert(where: Path) -> tuple[str, str]:
    """A P-256 self-signed certificate for 127.0.0.1 (cheap handshakes), by the openssl CLI."""
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


def rss_kb(pid: int) -> int:
    """The process's resident memory (VmRSS), KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")
