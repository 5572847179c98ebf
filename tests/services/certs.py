"""Throwaway X.509 certificates for TLS tests, made with the ``openssl`` command line.

Why the command line: it is on every machine that has Mosquitto (Debian's ``openssl`` package), and the
alternative, the ``cryptography`` package, would be a test dependency for a few files. EC P-256 keys take
milliseconds to make (RSA takes far longer), and a one-day validity keeps a leaked test key harmless.

The certificates carry the extensions a strict verifier wants (Python 3.13's default context sets
VERIFY_X509_STRICT): the CA says CA:TRUE and keyCertSign, leaves say CA:FALSE, their key usage and extended
key usage, and name their issuer's key (authorityKeyIdentifier). The server certificate is valid for
``127.0.0.1`` and ``localhost`` (subjectAltName), which is what a client checks the broker's name against.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
VALID_DAYS = 1
SERVER_NAMES = "IP:127.0.0.1,DNS:localhost"


class OpensslUnavailable(RuntimeError):
    """No openssl command on this machine."""


@dataclass(frozen=True)
class CertAndKey:
    cert: Path
    key: Path


@dataclass(frozen=True)
class TestPki:
    """A CA with a server and a client certificate it signed, plus an unrelated CA (for "wrong CA" tests)."""

    __test__ = False  # a dataclass named Test*, not a test class

    ca: CertAndKey
    server: CertAndKey
    client: CertAndKey
    other_ca: CertAndKey


def make_pki(folder: Path) -> TestPki:
    """Create the certificates and keys (PEM) in ``folder`` (which must exist)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise OpensslUnavailable("the openssl command was not found on PATH; install it: apt-get install openssl")
    ca = _make_ca(openssl, folder, "ca", "linewatch test CA")
    other_ca = _make_ca(openssl, folder, "other-ca", "linewatch unrelated test CA")
    server = _make_leaf(
        openssl, folder, "server", ca, "localhost", f"extendedKeyUsage=serverAuth\nsubjectAltName={SERVER_NAMES}"
    )
    client = _make_leaf(openssl, folder, "client", ca, "linewatch-test-client", "extendedKeyUsage=clientAuth")
    return TestPki(ca=ca, server=server, client=client, other_ca=other_ca)


def _make_ca(openssl: str, folder: Path, name: str, common_name: str) -> CertAndKey:
    pair = CertAndKey(folder / f"{name}.crt", folder / f"{name}.key")
    _run(
        openssl, "req", "-x509", *_EC_KEY, "-days", str(VALID_DAYS), "-subj", f"/CN={common_name}",
        "-keyout", str(pair.key), "-out", str(pair.cert),
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return pair


def _make_leaf(openssl: str, folder: Path, name: str, ca: CertAndKey, common_name: str, usage: str) -> CertAndKey:
    """A key, a signing request, and the CA's signature over it with ``usage`` (extension lines) added."""
    pair = CertAndKey(folder / f"{name}.crt", folder / f"{name}.key")
    request = folder / f"{name}.csr"
    extensions = folder / f"{name}.ext"
    extensions.write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        f"{usage}\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n"
    )
    _run(openssl, "req", *_EC_KEY, "-subj", f"/CN={common_name}", "-keyout", str(pair.key), "-out", str(request))
    _run(
        openssl, "x509", "-req", "-in", str(request), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-set_serial", str(secrets.randbits(63)), "-days", str(VALID_DAYS), "-extfile", str(extensions),
        "-out", str(pair.cert),
    )  # fmt: skip
    return pair


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed ({done.returncode}): {done.stderr.strip()}")
