"""Find, before following or publishing, client settings that can never reach the brokers.

Why: kafka-python treats every failed connection as a broker that is down and retries
for ever, so a CA file that does not sign the brokers' certificates, a client
certificate the brokers refuse, or TLS spoken to a plaintext listener (or the reverse)
left a relay or a node logging "broker unavailable" without end. Here each bootstrap
server is asked once, as the Kafka client would ask it (TCP, the TLS handshake with the
same files, then an ApiVersions request, which every broker answers before any SASL
exchange), and what can only be a mistake in the settings is named. A server that
cannot be reached at all is not a mistake: brokers restart, and the clients retry.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: How long one server may take to accept, handshake and answer.
TIMEOUT_S = 5.0
#: A server that closed the connection or went silent is asked again after this long,
#: in case it was restarting: only an answer that repeats is taken for a mistake.
RETRY_AFTER_S = 1.0
_API_VERSIONS_V0 = 18
_CORRELATION_ID = 0x0DF6


class _Unreachable(Exception):
    """Nothing accepted the connection: the broker is down, not misconfigured."""


class _UnusableFile(Exception):
    """A TLS option names a file that does not hold what it should."""


@dataclass(frozen=True)
class _Problem:
    message: str
    #: False for a server that closed the connection or went silent, which a broker
    #: that is restarting does too: asked again before being taken for a mistake.
    certain: bool = True


def connection_problem(
    bootstrap: str, security: Mapping[str, Any], timeout: float | None = None
) -> str | None:
    """What stops these settings from ever talking to the brokers, or None.

    None as soon as one server answers a Kafka request (the settings work), and when
    no server can be reached now (the clients retry). ``security`` holds kafka-python's
    options (``security_protocol``, ``ssl_cafile``, ``ssl_certfile``, ``ssl_keyfile``);
    ``timeout`` is ``TIMEOUT_S`` unless given."""
    timeout = TIMEOUT_S if timeout is None else timeout
    try:
        client = _Client.of(security)
    except _UnusableFile as exc:
        return str(exc)
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        address = (host.strip("[]"), int(port))
        try:
            problem = client.ask(address, timeout)
            if problem is not None and not problem.certain:
                time.sleep(RETRY_AFTER_S)
                problem = client.ask(address, timeout)
        except _Unreachable:
            continue
        return None if problem is None else problem.message
    return None


@dataclass(frozen=True)
class _Client:
    protocol: str
    context: ssl.SSLContext | None
    has_certificate: bool

    @classmethod
    def of(cls, security: Mapping[str, Any]) -> _Client:
        """The TLS client side kafka-python builds from the same options: the CA file
        (or the system's CAs), the server's name checked, the client certificate if any."""
        protocol = str(security.get("security_protocol", "PLAINTEXT"))
        if protocol not in ("SSL", "SASL_SSL"):
            return cls(protocol, None, False)
        cafile, certfile = security.get("ssl_cafile"), security.get("ssl_certfile")
        try:
            context = ssl.create_default_context(cafile=cafile)
        except (ssl.SSLError, OSError) as exc:
            raise _UnusableFile(f"--kafka-ca-file {cafile} holds no CA certificate in PEM ({exc})") from exc
        if certfile:
            keyfile = security.get("ssl_keyfile")
            try:
                context.load_cert_chain(certfile, keyfile, security.get("ssl_password"))
            except (ssl.SSLError, OSError) as exc:
                raise _UnusableFile(
                    f"--kafka-cert-file {certfile} and --kafka-key-file {keyfile} are not a certificate "
                    f"and its private key in PEM ({exc})"
                ) from exc
        return cls(protocol, context, bool(certfile))

    def ask(self, address: tuple[str, int], timeout: float) -> _Problem | None:
        where = f"the broker at {address[0]}:{address[1]}"
        try:
            raw = socket.create_connection(address, timeout=timeout)
        except OSError as exc:
            raise _Unreachable(str(exc)) from exc
        with contextlib.closing(raw):
            if self.context is None:
                return self._answer(raw, where)
            try:
                conn = self.context.wrap_socket(raw, server_hostname=address[0])
            except ssl.SSLCertVerificationError as exc:
                return _Problem(
                    f"{where} showed a certificate this client does not trust ({exc.verify_message}): "
                    "check --kafka-ca-file, and that the certificate names the host given in --kafka"
                )
            except ssl.SSLError as exc:
                return _Problem(f"the TLS handshake with {where} failed ({exc.reason or exc})")
            except (TimeoutError, ConnectionError) as exc:
                return _Problem(
                    f"{where} did not complete a TLS handshake ({_said(exc)}): is it a plaintext "
                    f"listener? (--kafka-security-protocol is {self.protocol})",
                    certain=False,
                )
            with contextlib.closing(conn):
                return self._answer(conn, where)

    def _answer(self, conn: socket.socket, where: str) -> _Problem | None:
        """Send ApiVersions v0 and read the answer's header: None if it is Kafka's."""
        client_id = b"dfg-preflight"
        body = struct.pack(">hhih", _API_VERSIONS_V0, 0, _CORRELATION_ID, len(client_id)) + client_id
        try:
            conn.sendall(struct.pack(">i", len(body)) + body)
            header = _read(conn, 8)
            silence = "it closed the connection"
        except ssl.SSLError as exc:  # an alert after the handshake: our certificate refused
            return _Problem(f"{where} refused this client's certificate ({exc.reason or exc}): {_CERT_FILES}")
        except (TimeoutError, ConnectionError) as exc:
            header, silence = b"", _said(exc)
        if len(header) == 8 and struct.unpack(">ii", header)[1] == _CORRELATION_ID:
            return None
        if header[:1] == b"\x15":  # a TLS alert record, sent in the clear
            return _Problem(
                f"{where} speaks TLS: use --kafka-security-protocol SSL or SASL_SSL, not {self.protocol}"
            )
        if self.context is not None:
            whose = (
                "refused this client's certificate"
                if self.has_certificate
                else "required a client certificate"
            )
            return _Problem(
                f"{where} answered no Kafka request after the TLS handshake ({silence}): it may have "
                f"{whose}: {_CERT_FILES}",
                certain=False,
            )
        return _Problem(
            f"{where} answered no Kafka request ({silence}): is it a TLS listener? "
            f"(--kafka-security-protocol is {self.protocol})",
            certain=False,
        )


_CERT_FILES = "check --kafka-cert-file and --kafka-key-file"


def _said(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _read(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data
