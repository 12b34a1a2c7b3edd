"""Certificates for TLS tests, made with the ``openssl`` command: a CA, a server and a client certificate."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class TlsFiles:
    """PEM files in one directory: ``ca`` signed ``server_cert`` (127.0.0.1, localhost) and ``client_cert``."""

    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str = "ca") -> tuple[Path, Path]:
    """A self-signed CA in ``directory``; returns (certificate, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    _run("req", "-x509", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
         "-subj", f"/CN=streamclf test {name}", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    return directory / f"{name}.crt", directory / f"{name}.key"


def _signed(directory: Path, name: str, ca: Path, ca_key: Path, extensions: str) -> tuple[Path, Path]:
    (directory / f"{name}.ext").write_text(
        extensions + "\nauthorityKeyIdentifier=keyid,issuer\nsubjectKeyIdentifier=hash\n"
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n")
    _run("req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
    _run("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
         "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=directory)
    return directory / f"{name}.crt", directory / f"{name}.key"


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA and, signed by it, a server certificate for 127.0.0.1/localhost and a client certificate."""
    ca, ca_key = make_ca(directory)
    server_cert, server_key = _signed(directory, "server", ca, ca_key,
                                      "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth")
    client_cert, client_key = _signed(directory, "client", ca, ca_key, "extendedKeyUsage=clientAuth")
    return TlsFiles(ca, ca_key, server_cert, server_key, client_cert, client_key)


def with_server_names(files: TlsFiles, directory: Path, *names: str) -> TlsFiles:
    """``files`` with a server certificate, signed by the same CA, for ``names`` (DNS names) only."""
    directory.mkdir(parents=True, exist_ok=True)
    san = ",".join(f"DNS:{n}" for n in names)
    cert, key = _signed(directory, "server", files.ca, files.ca_key,
                        f"subjectAltName={san}\nextendedKeyUsage=serverAuth")
    return TlsFiles(files.ca, files.ca_key, cert, key, files.client_cert, files.client_key)
