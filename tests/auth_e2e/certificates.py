"""A private certificate authority and a server certificate, made with the ``openssl`` CLI.

The server certificate names 127.0.0.1, ``localhost`` and this machine's own non-loopback
address: docker treats every registry on 127.0.0.0/8 as insecure (it speaks TLS to it but
never checks the certificate), so the TLS tests reach the registry through the other
address, where docker does verify the chain against the CA it is given.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.commands import run


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the CA certificate clients trust
    cert: Path  # the server's certificate
    key: Path  # the server's private key
    cert_dir: Path  # a directory holding only ``ca.crt`` (containers/image ``--cert-dir``)


def outward_address() -> str | None:
    """This machine's own non-loopback IPv4 address (the source address of its default
    route), or None when it has none. Connecting a UDP socket sends nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))  # TEST-NET-2: only the route is looked up
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if ipaddress.ip_address(address).is_loopback else address


def make_certificates(directory: Path, addresses: list[str]) -> Certificates:
    """A CA, and a server certificate for ``addresses`` (IPs) and ``localhost``, EC P-256."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = directory / "ca.key", directory / "ca.crt"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(
        ["openssl", "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca),
         "-days", "2", "-subj", "/CN=Dockyard auth e2e CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
    )  # fmt: skip
    run(["openssl", "req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=dockyard"])
    names = ",".join([*(f"IP:{a}" for a in addresses), "DNS:localhost"])
    extensions = directory / "server.ext"
    extensions.write_text(
        f"subjectAltName={names}\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
    )
    run(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extensions)],
    )  # fmt: skip
    cert_dir = directory / "cert-dir"
    cert_dir.mkdir(exist_ok=True)
    (cert_dir / "ca.crt").write_bytes(ca.read_bytes())
    return Certificates(ca=ca, cert=cert, key=key, cert_dir=cert_dir)
