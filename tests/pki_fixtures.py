"""A pipeline's credentials made in-process (cryptography), in role fl_pki's layout: ca.crt and
ca.key, services/<name>.crt and .key, controller.crt and .key. Tests use them where a real
certificate is needed without running Ansible."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CONTROLLER = "hfl-controller"


def _name(cn, ou=None):
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if ou:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    return x509.Name(attrs)


def _san(value):
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.DNSName(value)


def issue(ca_key, ca_cert, cn, ou, sans, server=True, days=825, key=None):
    """(key, certificate) for ``cn`` signed by the CA; ``key`` reuses an existing key."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    uses = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server else [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn, ou)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(s) for s in sans]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(uses), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def make_ca(cn="hfl-demo CA"):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn)).issuer_name(_name(cn))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def pem(thing):
    if isinstance(thing, x509.Certificate):
        return thing.public_bytes(serialization.Encoding.PEM)
    return thing.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())


def write_key(path, key):
    Path(path).write_bytes(pem(key))
    Path(path).chmod(0o600)


def write_pki(folder, services, ca=None):
    """``services``: {name: (role, address)} -> ``folder`` in fl_pki's layout and modes (plus
    the controller's certificate); returns the folder as a Path. ``ca``: (key, cert) to sign
    with."""
    folder = Path(folder)
    (folder / "services").mkdir(parents=True, exist_ok=True)
    for made in (folder, folder / "services"):
        made.chmod(0o700)
    ca_key, ca_cert = ca or make_ca()
    write_key(folder / "ca.key", ca_key)
    (folder / "ca.crt").write_bytes(pem(ca_cert))
    subjects = {f"services/{n}": (n, role, [n, address], True)
                for n, (role, address) in services.items()}
    subjects["controller"] = (CONTROLLER, "controller", [CONTROLLER], False)
    for base, (cn, ou, sans, server) in subjects.items():
        key, cert = issue(ca_key, ca_cert, cn, ou, sans, server)
        write_key(folder / f"{base}.key", key)
        (folder / f"{base}.crt").write_bytes(pem(cert))
    return folder


def issue_from(pki, name, role, folder):
    """A certificate for ``name`` in ``role`` (server and client), signed by the CA of role
    fl_pki's folder ``pki``: a client of the pipeline that the plan does not have. Returns the
    paths of its certificate and key, written to ``folder``."""
    pki, folder = Path(pki), Path(folder)
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key, cert = issue(ca_key, ca_cert, name, role, [name, "127.0.0.1"])
    folder.mkdir(parents=True, exist_ok=True)
    write_key(folder / f"{name}.key", key)
    (folder / f"{name}.crt").write_bytes(pem(cert))
    return folder / f"{name}.crt", folder / f"{name}.key"
