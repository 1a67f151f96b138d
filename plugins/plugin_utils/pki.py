# Copyright: hfl.orchestration developers
# Apache License 2.0
"""What a pipeline's credentials must be, and which of those on disk are not (role fl_pki).

Controller-side, over ``cryptography`` (community.crypto needs it there anyway). The role makes
keys and signs certificates with community.crypto; this only decides what needs that, so a
re-run with nothing to do reads a few files instead of running two dozen modules.

    report = check(folder, plan, controller_name)
    report["dirs"]       # folders to create (0700)
    report["ca"]         # why the CA must be made again, or None (its CN: report["ca_name"])
    report["subjects"]   # every subject, each with "reason": why it must be made, or None
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from dataclasses import asdict, dataclass

from ansible_collections.hfl.orchestration.plugins.plugin_utils.manifests import (
    dns_name,
    namespace,
)
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CONTROLLER_OU = "controller"  # the controller certificate's OU; a service's is its role
# A certificate (or the CA) that expires within this many days is signed anew.
RENEW_DAYS = 30
SERVER_AUTH, CLIENT_AUTH = "serverAuth", "clientAuth"


@dataclass(frozen=True)
class Subject:
    """One key and certificate: ``base`` is the files' path under the pki folder, without the
    extension; ``sans`` and ``usages`` are spelled as community.crypto takes them."""

    name: str
    base: str
    ou: str
    sans: tuple
    usages: tuple
    controller: bool = False


def _san(value):
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"DNS:{value}"
    return f"IP:{value}"


def subjects(plan, controller_name):
    """The plan's services, then the controller (a client only). A service's names are its own,
    the address its children dial and, in pods, its Service names in the pipeline's namespace."""
    out = []
    for s in plan["services"]:
        sans = [f"DNS:{s['name']}"]
        if s.get("address"):
            sans.append(_san(s["address"]))
        if plan["runtime"] != "process":
            zone = f"{dns_name(s['name'])}.{namespace(plan['pipeline'])}"
            sans += [f"DNS:{dns_name(s['name'])}", f"DNS:{zone}", f"DNS:{zone}.svc",
                     f"DNS:{zone}.svc.cluster.local"]
        # A pool speaks for its virtual clients (fl_service takes `<pool>-<n>` names from here).
        sans += [f"DNS:{member}" for member in s.get("virtual_clients") or ()]
        out.append(Subject(name=s["name"], base=f"services/{s['name']}", ou=s["role"],
                           sans=tuple(dict.fromkeys(sans)), usages=(SERVER_AUTH, CLIENT_AUTH)))
    out.append(Subject(name=controller_name, base="controller", ou=CONTROLLER_OU,
                       sans=(f"DNS:{controller_name}",), usages=(CLIENT_AUTH,), controller=True))
    return out


def ca_name(pipeline):
    return f"hfl-{pipeline} CA"


def _read(path, load):
    try:
        with open(path, "rb") as f:
            return load(f.read())
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm):
        return None


def _key(path):
    return _read(path, lambda data: serialization.load_pem_private_key(data, None))


def _cert(path):
    return _read(path, x509.load_pem_x509_certificate)


def _same_key(cert, key):
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)


class Stale(Exception):
    """Why a key or certificate must be made again; ``renew``: only because it expires (its
    request is unchanged, so the signing module must be told to sign it anyway)."""

    def __init__(self, reason, renew=False):
        super().__init__(reason)
        self.renew = renew


def _usable_key(path):
    """The ECDSA P-256 private key at ``path``; Stale if missing, unreadable, of another kind or
    not 0600 (the key module then fixes its mode and keeps it)."""
    key = _key(path)
    name = os.path.basename(path)
    if key is None:
        raise Stale(f"{name}: no readable key")
    if not (isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"):
        raise Stale(f"{name}: not an ECDSA P-256 key")
    if stat.S_IMODE(os.stat(path).st_mode) != 0o600:
        raise Stale(f"{name}: its mode is not 0600")
    return key


def _attributes(name):
    return sorted((a.oid.dotted_string, a.value) for a in name)


def _extension(cert, cls):
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _certificate_of(path, key, now):
    """The certificate at ``path`` if it holds ``key`` and expires in more than RENEW_DAYS."""
    name = os.path.basename(path)
    cert = _cert(path)
    if cert is None:
        raise Stale(f"{name}: no readable certificate")
    if not _same_key(cert, key):
        raise Stale(f"{name}: not the certificate of its key")
    if cert.not_valid_after_utc - now < datetime.timedelta(days=RENEW_DAYS):
        raise Stale(f"{name}: it expires on {cert.not_valid_after_utc:%Y-%m-%d}", renew=True)
    return cert


def check_ca(folder, pipeline, now):
    """The CA's certificate (``ca.key`` and ``ca.crt``); Stale if it must be made again."""
    key = _usable_key(os.path.join(folder, "ca.key"))
    cert = _certificate_of(os.path.join(folder, "ca.crt"), key, now)
    want = [(NameOID.COMMON_NAME.dotted_string, ca_name(pipeline))]
    if _attributes(cert.subject) != want or cert.issuer != cert.subject:
        raise Stale(f"ca.crt: not the self-signed {ca_name(pipeline)!r}")
    basic = _extension(cert, x509.BasicConstraints)
    if basic is None or not basic.ca or basic.path_length != 0:
        raise Stale("ca.crt: not a CA with pathlen 0")
    return cert


def _sans(cert):
    names = _extension(cert, x509.SubjectAlternativeName)
    if names is None:
        return set()
    out = {f"DNS:{n}" for n in names.get_values_for_type(x509.DNSName)}
    return out | {f"IP:{ip}" for ip in names.get_values_for_type(x509.IPAddress)}


_USAGE_OIDS = {SERVER_AUTH: "1.3.6.1.5.5.7.3.1", CLIENT_AUTH: "1.3.6.1.5.5.7.3.2"}


def check_subject(folder, subject, ca_cert, now):
    """Stale if ``subject``'s key or certificate must be made again: missing or unreadable, a
    key that is not the certificate's, names, role or uses that are not the plan's, not signed
    by the CA ``ca_cert``, or expiring within RENEW_DAYS days."""
    base = os.path.join(folder, subject.base)
    cert = _certificate_of(base + ".crt", _usable_key(base + ".key"), now)
    what = f"{os.path.basename(base)}.crt"
    want = [(NameOID.COMMON_NAME.dotted_string, subject.name),
            (NameOID.ORGANIZATIONAL_UNIT_NAME.dotted_string, subject.ou)]
    if _attributes(cert.subject) != sorted(want):
        raise Stale(f"{what}: its subject is not CN={subject.name}, OU={subject.ou}")
    if _sans(cert) != set(subject.sans):
        raise Stale(f"{what}: its names are not {', '.join(subject.sans)}")
    usages = _extension(cert, x509.ExtendedKeyUsage)
    if usages is None or {u.dotted_string for u in usages} != {
            _USAGE_OIDS[u] for u in subject.usages}:
        raise Stale(f"{what}: its uses are not {', '.join(subject.usages)}")
    basic = _extension(cert, x509.BasicConstraints)
    if basic is None or basic.ca:
        raise Stale(f"{what}: not marked CA:FALSE")
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, ValueError, TypeError):
        raise Stale(f"{what}: not signed by the pipeline's CA") from None


def check(folder, plan, controller_name, rotate=False, rotate_ca=False, now=None):
    """What of the pipeline's credentials under ``folder`` must be made: {"dirs": folders to
    create or make 0700, "ca": why the CA must be made or None, "ca_renew", "subjects": [each
    subject as a dict with "reason": why it must be made or None, and "renew": whether its
    certificate must be signed again though its request is unchanged (it expires)]}.
    Rotation makes everything it covers; a new CA, every certificate."""
    now = now or datetime.datetime.now(datetime.UTC)
    dirs = [d for d in (folder, os.path.join(folder, "services"))
            if not os.path.isdir(d) or stat.S_IMODE(os.stat(d).st_mode) != 0o700]
    ca, ca_renew, ca_cert = None, False, None
    if rotate_ca:
        ca = "rotation of the CA"
    else:
        try:
            ca_cert = check_ca(folder, plan["pipeline"], now)
        except Stale as e:
            ca, ca_renew = str(e), e.renew
    out = []
    for subject in subjects(plan, controller_name):
        reason, renew = None, False
        if rotate or rotate_ca:
            reason = "rotation"
        elif ca:
            reason = "the CA must be made first"
        else:
            try:
                check_subject(folder, subject, ca_cert, now)
            except Stale as e:
                reason, renew = str(e), e.renew
        out.append({**asdict(subject), "reason": reason, "renew": renew})
    return {"dirs": dirs, "ca": ca, "ca_renew": ca_renew, "ca_name": ca_name(plan["pipeline"]),
            "subjects": out}
