"""How dfg's Kafka clients authenticate to a secured cluster: TLS and SASL options.

Why here: a production Apache Kafka cluster takes clients over TLS, usually with SASL
(SCRAM) or client certificates, and ACLs that let only the relay write the ledger's
topics. Every command that talks to Kafka (the relay, a follower, a computation node
following the topics) takes the same options, checked together before anything
connects: an option the protocol would ignore is refused, not silently dropped. The
password is read from a file (or the environment's file path), never from the command
line, where other users of the machine could read it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_FILE = click.Path(dir_okay=False, exists=True, readable=True, path_type=Path)


def kafka_security(
    protocol: str,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    sasl_mechanism: str | None = None,
    sasl_username: str | None = None,
    sasl_password_file: Path | None = None,
) -> dict[str, Any]:
    """kafka-python's client options for these settings; ``click.UsageError`` (exit 2)
    for a combination that cannot be what was meant."""
    tls = protocol in ("SSL", "SASL_SSL")
    sasl = protocol.startswith("SASL_")
    if not tls and any((ca_file, cert_file, key_file)):
        raise click.UsageError(f"the --kafka-*-file options need TLS (SSL or SASL_SSL), not {protocol}")
    if (cert_file is None) != (key_file is None):
        raise click.UsageError("--kafka-cert-file and --kafka-key-file go together (a client certificate)")
    given: dict[str, object] = {
        "--kafka-sasl-mechanism": sasl_mechanism,
        "--kafka-sasl-username": sasl_username,
        "--kafka-sasl-password-file": sasl_password_file,
    }
    if not sasl and any(v is not None for v in given.values()):
        raise click.UsageError(f"SASL options need --kafka-security-protocol SASL_SSL, not {protocol}")
    missing = [name for name, value in given.items() if value is None]
    if sasl and missing:
        raise click.UsageError(f"--kafka-security-protocol {protocol} needs {', '.join(missing)}")
    options: dict[str, Any] = {"security_protocol": protocol}
    if ca_file is not None:
        options["ssl_cafile"] = str(ca_file)
    if cert_file is not None and key_file is not None:
        options["ssl_certfile"], options["ssl_keyfile"] = str(cert_file), str(key_file)
    if sasl and sasl_password_file is not None:
        password = sasl_password_file.read_text(encoding="utf-8").rstrip("\r\n")
        if not password:
            raise click.UsageError(f"--kafka-sasl-password-file {sasl_password_file} is empty")
        options["sasl_mechanism"] = sasl_mechanism
        options["sasl_plain_username"] = sasl_username
        options["sasl_plain_password"] = password
    return options


def kafka_security_options(func: F) -> F:
    """Adds the TLS and SASL options and passes ``kafka_security`` (client options)."""

    @click.option(
        "--kafka-security-protocol",
        "protocol",
        type=click.Choice(PROTOCOLS),
        default="PLAINTEXT",
        show_default=True,
        envvar="DFG_KAFKA_SECURITY_PROTOCOL",
        show_envvar=True,
        help="How to reach the brokers (production: SASL_SSL or SSL).",
    )
    @click.option(
        "--kafka-ca-file", type=_FILE, envvar="DFG_KAFKA_CA_FILE", show_envvar=True, help="Brokers' CA (PEM)."
    )
    @click.option(
        "--kafka-cert-file",
        type=_FILE,
        envvar="DFG_KAFKA_CERT_FILE",
        show_envvar=True,
        help="Client cert (PEM).",
    )
    @click.option(
        "--kafka-key-file",
        type=_FILE,
        envvar="DFG_KAFKA_KEY_FILE",
        show_envvar=True,
        help="Client key (PEM).",
    )
    @click.option(
        "--kafka-sasl-mechanism",
        type=click.Choice(MECHANISMS),
        envvar="DFG_KAFKA_SASL_MECHANISM",
        show_envvar=True,
        help="SASL mechanism (with SASL_SSL or SASL_PLAINTEXT).",
    )
    @click.option(
        "--kafka-sasl-username", envvar="DFG_KAFKA_SASL_USERNAME", show_envvar=True, help="SASL user name."
    )
    @click.option(
        "--kafka-sasl-password-file",
        type=_FILE,
        envvar="DFG_KAFKA_SASL_PASSWORD_FILE",
        show_envvar=True,
        help="File holding the SASL password (never given on the command line).",
    )
    @functools.wraps(func)
    def wrapper(
        *args: Any,
        protocol: str,
        kafka_ca_file: Path | None,
        kafka_cert_file: Path | None,
        kafka_key_file: Path | None,
        kafka_sasl_mechanism: str | None,
        kafka_sasl_username: str | None,
        kafka_sasl_password_file: Path | None,
        **kwargs: Any,
    ) -> Any:
        security = kafka_security(
            protocol,
            kafka_ca_file,
            kafka_cert_file,
            kafka_key_file,
            kafka_sasl_mechanism,
            kafka_sasl_username,
            kafka_sasl_password_file,
        )
        return func(*args, kafka_security=security, **kwargs)

    return wrapper  # type: ignore[return-value]
