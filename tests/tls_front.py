"""A TLS front for the test broker, and the certificates it and its clients use.

Why: production clusters take dfg's Kafka clients over TLS, often with client
certificates, and Tansu 0.6 completes no TLS handshake. So the tests put a
TLS-terminating forwarder in front of the real broker (as a TLS load balancer or Kafka
proxy would be) and have the broker advertise the forwarder's address: every
connection kafka-python opens, to bootstrap or after metadata, goes through a real
handshake with Python's ``ssl`` server side, certificate checks included.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from infra.tansu import free_port

_LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, the broker's certificate for 127.0.0.1 and a client certificate,
    all from that CA, and a second CA that signed nothing the broker shows."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_ca: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(_LOOPBACK))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    """Write a fresh CA, broker and client certificate (and a stranger CA) to ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, stranger_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    pem = serialization.Encoding.PEM
    pki = Pki(
        ca=directory / "ca.pem",
        server_cert=directory / "broker.pem",
        server_key=directory / "broker.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        stranger_ca=directory / "stranger-ca.pem",
    )
    pki.ca.write_bytes(_certificate("dfg test CA", ca_key, "dfg test CA", ca_key, ca=True).public_bytes(pem))
    stranger = _certificate("another CA", stranger_key, "another CA", stranger_key, ca=True)
    pki.stranger_ca.write_bytes(stranger.public_bytes(pem))
    server = _certificate("broker", server_key, "dfg test CA", ca_key, usage=ExtendedKeyUsageOID.SERVER_AUTH)
    pki.server_cert.write_bytes(server.public_bytes(pem))
    _write_key(pki.server_key, server_key)
    client_usage = ExtendedKeyUsageOID.CLIENT_AUTH
    client = _certificate("node:alpha", client_key, "dfg test CA", ca_key, usage=client_usage)
    pki.client_cert.write_bytes(client.public_bytes(pem))
    _write_key(pki.client_key, client_key)
    return pki


def server_context(pki: Pki, *, require_client_cert: bool) -> ssl.SSLContext:
    """The broker side: its certificate, and with ``require_client_cert`` mutual TLS."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki.ca)
    return context


class TlsFront:
    """Accept TLS on a loopback port and forward the plain bytes to ``target``.

    Runs its own event loop in a daemon thread."""

    def __init__(self, target: str, context: ssl.SSLContext, *, port: int | None = None) -> None:
        host, _, target_port = target.rpartition(":")
        self.target = (host, int(target_port))
        self.context = context
        self.port = port if port is not None else free_port(_LOOPBACK)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls-front", daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"{_LOOPBACK}:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        started: Future[asyncio.Server] = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        self._server = started.result(timeout=10)
        return self

    def close(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(
            self._forward, _LOOPBACK, self.port, ssl=self.context, ssl_handshake_timeout=10
        )

    async def _forward(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        try:
            broker, to_broker = await asyncio.open_connection(*self.target)
        except OSError:
            to_client.close()
            return
        await asyncio.gather(_pipe(client, to_broker), _pipe(broker, to_client), return_exceptions=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()
