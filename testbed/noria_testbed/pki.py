"""Certificates for a throw-away control plane, made with the ``openssl`` command.

The apiserver needs a serving certificate its clients can verify, a client CA to authenticate
them, and a key pair to sign service-account tokens. Everything here lives for one testbed run
inside its temp dir, so keys are unencrypted and certificates are valid for a year. ECDSA keys
(P-256) keep generation instant; Go's TLS stack and the apiserver accept them everywhere.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path  # private: signs service-account tokens (apiserver) and is given to the controller manager
    sa_pub: Path  # public: verifies them


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed in {cwd}: {result.stderr.strip()}")


def _ec_key(path: Path) -> None:
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(path), cwd=path.parent)


def _signed_cert(directory: Path, name: str, subject: str, extensions: str, ca_cert: Path, ca_key: Path) -> None:
    key, csr, crt, ext = (directory / f"{name}.{suffix}" for suffix in ("key", "csr", "crt", "ext"))
    _ec_key(key)
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr), cwd=directory)
    ext.write_text(extensions)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", "365", "-sha256", "-extfile", str(ext), "-out", str(crt), cwd=directory)


def make_pki(directory: Path, *, server_ips: tuple[str, ...] = ("127.0.0.1",),
             server_names: tuple[str, ...] = ("localhost", "kubernetes", "kubernetes.default",
                                               "kubernetes.default.svc")) -> Pki:
    """Create a CA, an apiserver serving cert, an admin client cert (system:masters) and an SA key pair."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    _ec_key(ca_key)
    _openssl("req", "-x509", "-new", "-key", str(ca_key), "-subj", "/CN=noria-testbed-ca", "-days", "365",
             "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", "-out", str(ca_cert),
             cwd=directory)

    sans = ",".join([f"IP:{ip}" for ip in server_ips] + [f"DNS:{name}" for name in server_names])
    _signed_cert(directory, "serving", "/CN=kube-apiserver",
                 "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                 f"extendedKeyUsage=serverAuth\nsubjectAltName={sans}\n", ca_cert, ca_key)
    # Group system:masters is bound to cluster-admin by the apiserver's bootstrap RBAC policy.
    _signed_cert(directory, "admin", "/O=system:masters/CN=noria-testbed-admin",
                 "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                 "extendedKeyUsage=clientAuth\n", ca_cert, ca_key)

    sa_key, sa_pub = directory / "sa.key", directory / "sa.pub"
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(sa_key), cwd=directory)
    _openssl("pkey", "-in", str(sa_key), "-pubout", "-out", str(sa_pub), cwd=directory)
    for path in directory.glob("*.key"):
        path.chmod(0o600)
    return Pki(ca_cert=ca_cert, ca_key=ca_key, serving_cert=directory / "serving.crt",
               serving_key=directory / "serving.key", admin_cert=directory / "admin.crt",
               admin_key=directory / "admin.key", sa_key=sa_key, sa_pub=sa_pub)
