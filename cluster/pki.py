"""The cluster's certificates and keys, as kubeadm lays them out (one CA, made per cluster).

- ``ca.crt``/``ca.key``: signs every certificate below; clients trust it.
- ``apiserver.crt``: kube-apiserver's serving certificate, for 127.0.0.1, localhost and the
  ``kubernetes`` Service's names.
- ``admin.crt``: a client in ``system:masters``, for the control plane's own components and the
  harness that installs Argo (never for the sweep, which gets a ServiceAccount's token).
- ``kubelet.crt``: the node's kubelet API (exec and logs), and ``apiserver-kubelet-client.crt``
  that kube-apiserver presents to it.
- ``sa.key``/``sa.pub``: signs ServiceAccount tokens.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID = datetime.timedelta(days=2)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(common: str, org: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COMMON_NAME, common)]
    if org:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(parts)


def _certificate(subject, key, issuer, issuer_key, *, ca=False, usages=(), hosts=()):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALID)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    if hosts:
        names = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path, service_ip: str) -> Path:
    """Write every certificate and key the cluster needs into ``folder``; the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = _name("torchperf-cluster-ca")
    ca = _certificate(ca_name, ca_key, ca_name, ca_key, ca=True)
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(folder / "ca.key", ca_key)
    server, client = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
    leaves = {
        "apiserver": (
            _name("kube-apiserver"),
            [server],
            [
                "127.0.0.1",
                "localhost",
                service_ip,
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        ),
        "admin": (_name("torchperf-admin", "system:masters"), [client], []),
        "kubelet": (_name("system:node:node-0", "system:nodes"), [server], ["127.0.0.1"]),
        "apiserver-kubelet-client": (
            _name("kube-apiserver-kubelet-client", "system:masters"),
            [client],
            [],
        ),
    }
    for name, (subject, usages, hosts) in leaves.items():
        key = _key()
        cert = _certificate(subject, key, ca_name, ca_key, usages=usages, hosts=hosts)
        (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(folder / f"{name}.key", key)
    sa = _key()
    _write_key(folder / "sa.key", sa)
    (folder / "sa.pub").write_bytes(
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return folder


def kubeconfig(
    server: str,
    ca: Path,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    token: str | None = None,
    namespace: str = "default",
    user: str = "user",
) -> str:
    """A kubeconfig (YAML text) for one identity: a client certificate or a token."""
    import yaml

    credentials = (
        {"token": token}
        if token
        else {
            "client-certificate": str(cert),
            "client-key": str(key),
        }
    )
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "torchperf",
                    "cluster": {"server": server, "certificate-authority": str(ca)},
                }
            ],
            "users": [{"name": user, "user": credentials}],
            "contexts": [
                {
                    "name": user,
                    "context": {"cluster": "torchperf", "user": user, "namespace": namespace},
                }
            ],
            "current-context": user,
        }
    )
