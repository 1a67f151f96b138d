"""A throwaway pipeline CA and certificates shaped like role fl_pki's, made with `cryptography`.

Used by bench/round_overhead.py (its mTLS run) and by the tests of fl_service's mutual TLS; the
collection's real credentials come from role fl_pki (docs/architecture.md, Credentials). Like
fl_pki's: ECDSA P-256 keys; the CA is CA:TRUE with path length 0; a certificate's subject CN is
the service's name and its OU the service's role (`global_aggregator`, `local_aggregator`,
`client`, or `controller`), its SANs the name, `localhost` and 127.0.0.1; a service's
certificate serves and is a client (serverAuth, clientAuth), the controller's is a client only.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CONTROLLER_ROLE = "controller"
_CA_USAGE = x509.KeyUsage(digital_signature=False, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=True, crl_sign=True, encipher_only=False,
                          decipher_only=False)
_LEAF_USAGE = x509.KeyUsage(digital_signature=True, content_commitment=False,
                            key_encipherment=False, data_encipherment=False, key_agreement=False,
                            key_cert_sign=False, crl_sign=False, encipher_only=False,
                            decipher_only=False)


class ThrowawayCA:
    """A CA in `folder` (ca.crt); `issue()` writes `<name>.crt` and `<name>.key` beside it."""

    def __init__(self, folder: Path, name: str = "hfl-test CA") -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        public = self._key.public_key()
        self._cert = (
            self._builder(self._name, public)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_CA_USAGE, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_path = self.folder / "ca.crt"
        self.ca_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def _builder(self, subject: x509.Name, public: ec.EllipticCurvePublicKey
                 ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(self._name)
                .public_key(public).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1)))

    def issue(self, name: str, role: str, members: tuple[str, ...] = ()) -> dict[str, str]:
        """A key and certificate for `name` in `role` (a pool's: also DNS names for its virtual
        clients `members`, as role fl_pki lists them); fl_service's TLS config keys for them
        (tls_cert, tls_key, tls_ca)."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                             x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role)])
        uses = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if role != CONTROLLER_ROLE:
            uses.append(ExtendedKeyUsageOID.SERVER_AUTH)
        sans = [x509.DNSName(name), *map(x509.DNSName, members), x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert = (
            self._builder(subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_LEAF_USAGE, critical=True)
            .add_extension(x509.ExtendedKeyUsage(uses), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        cert_path, key_path = self.folder / f"{name}.crt", self.folder / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
        return {"tls_cert": str(cert_path), "tls_key": str(key_path),
                "tls_ca": str(self.ca_path)}
