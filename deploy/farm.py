"""The routes between the hosts of a farm: a NATS cluster with mutual TLS under a farm CA.

Each host runs its own nats-server; its processes connect to it on loopback only, and
messages cross to the other hosts over nats-server's cluster routes. A route is TLS both
ways: each end shows a certificate signed by the farm's CA and checks the other's, so a
host without the farm's CA and a certificate from it can neither join nor read a route.

``flotilla farm ca DIR`` makes the CA; ``flotilla farm cert DIR NAME --ip ADDR`` a host's
certificate, both with openssl. The CA key never needs to leave the machine that made it:
copy ``ca.pem``, ``NAME.pem`` and ``NAME-key.pem`` to the host.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from flotilla.libs.config import toml_values

_DAYS = "3650"


@dataclass(frozen=True)
class Cluster:
    listen: str                     # host:port the routes arrive on
    routes: tuple[str, ...] = ()    # the other hosts' route addresses, host:port
    tls_dir: Path | None = None     # ca.pem, <cert_name>.pem, <cert_name>-key.pem
    cert_name: str = "host"
    name: str = "flotilla"          # the cluster's name: every host of a farm uses the same

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Cluster | None":
        """FLOTILLA_CLUSTER_LISTEN, FLOTILLA_CLUSTER_ROUTES (comma-separated),
        FLOTILLA_FARM_TLS (a directory) and FLOTILLA_FARM_CERT (the certificate's name), or
        the same names in lower case in the TOML file FLOTILLA_CONFIG names (libs/config.py);
        the environment wins."""
        env = dict(os.environ if env is None else env)
        for key, value in toml_values(env).items():
            if key in ("cluster_listen", "cluster_routes", "farm_tls", "farm_cert"):
                if isinstance(value, list):  # routes may be a TOML array
                    value = ",".join(map(str, value))
                env.setdefault("FLOTILLA_" + key.upper(), str(value))
        listen = env.get("FLOTILLA_CLUSTER_LISTEN", "")
        if not listen:
            return None
        routes = tuple(r.strip() for r in env.get("FLOTILLA_CLUSTER_ROUTES", "").split(",") if r.strip())
        tls = env.get("FLOTILLA_FARM_TLS", "")
        return cls(listen, routes, Path(tls) if tls else None, env.get("FLOTILLA_FARM_CERT", "host"))

    def render(self) -> str:
        routes = json.dumps([f"nats-route://{r}" for r in self.routes])
        tls = ""
        if self.tls_dir is not None:
            d = self.tls_dir
            tls = (f"  tls {{\n"
                   f"    cert_file: {json.dumps(str(d / (self.cert_name + '.pem')))}\n"
                   f"    key_file: {json.dumps(str(d / (self.cert_name + '-key.pem')))}\n"
                   f"    ca_file: {json.dumps(str(d / 'ca.pem'))}\n"
                   # the other end must show a certificate of the farm's CA too
                   f"    verify: true\n"
                   f"    timeout: 5\n"
                   f"  }}\n")
        return (f"cluster {{\n  name: {json.dumps(self.name)}\n  listen: {json.dumps(self.listen)}\n"
                f"  routes: {routes}\n{tls}}}\n")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(directory: Path, subject: str = "/CN=flotilla farm CA") -> Path:
    """A new farm CA (``ca.pem``, ``ca-key.pem`` 0600) in ``directory``; returns ca.pem."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    key, cert = directory / "ca-key.pem", directory / "ca.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", _DAYS, "-subj", subject,
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    os.chmod(key, 0o600)
    return cert


def make_cert(ca_dir: Path, name: str, ips: list[str], dns: list[str] | None = None,
              out_dir: Path | None = None) -> Path:
    """A host certificate ``<name>.pem`` (and ``<name>-key.pem`` 0600) signed by the CA in
    ``ca_dir``, valid for ``ips`` and ``dns``, for both ends of a route."""
    out = out_dir or ca_dir
    out.mkdir(parents=True, exist_ok=True)
    key, csr, cert = out / f"{name}-key.pem", out / f"{name}.csr", out / f"{name}.pem"
    alt = ",".join([f"IP:{ip}" for ip in ips] + [f"DNS:{d}" for d in (dns or [name])])
    ext = out / f"{name}.ext"
    ext.write_text(f"subjectAltName={alt}\nextendedKeyUsage=serverAuth,clientAuth\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\n")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    os.chmod(key, 0o600)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_dir / "ca.pem"), "-CAkey", str(ca_dir / "ca-key.pem"),
             "-CAcreateserial", "-out", str(cert), "-days", _DAYS, "-extfile", str(ext))
    csr.unlink()
    ext.unlink()
    if out != ca_dir:
        (out / "ca.pem").write_bytes((ca_dir / "ca.pem").read_bytes())
    return cert
