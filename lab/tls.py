"""Self-signed TLS certificates for the lab's servers and the test stand-ins.

:func:`self_signed` writes one certificate (its own CA: clients trust it with
``ssl.create_default_context(cafile=cert)``) whose subject alternative names are the given host
names and IP addresses; :func:`server_context` loads it for a server.
"""
from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
from pathlib import Path


def self_signed(dir: Path, hostnames: list[str], days: int = 2) -> tuple[Path, Path]:
    """Write ``cert.pem`` and ``key.pem`` into ``dir``: an ECDSA P-256 certificate for every
    name in ``hostnames`` (IP literals become IP SANs, the rest DNS SANs; the first is also the
    common name), valid from five minutes ago for ``days`` days. Returns (cert, key)."""
    if not hostnames:
        raise ValueError("self_signed needs at least one host name or IP address")
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    cert, key = dir / "cert.pem", dir / "key.pem"
    try:
        _with_cryptography(cert, key, hostnames, days)
    except ImportError:  # the `cryptography` package is optional: the openssl command does the same
        san = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hostnames)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", str(days),
                        "-subj", f"/CN={hostnames[0]}", "-addext", f"subjectAltName={san}",
                        "-addext", "basicConstraints=critical,CA:TRUE"],
                       check=True, capture_output=True, timeout=30)
    key.chmod(0o600)
    return cert, key


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side TLS context serving ``cert``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def _with_cryptography(cert_path: Path, key_path: Path, hostnames: list[str], days: int) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    sans = [x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h) for h in hostnames]
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            # Key identifiers: what Python 3.13's strict verification expects of a self-signed CA.
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
