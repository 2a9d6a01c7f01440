"""The ``dfg`` command line: one entry point for operators, auditors and developers."""

from __future__ import annotations

import sqlite3
from typing import Any

import click
import psycopg
from eventsourcing.persistence import PersistenceError

from gateways.cli.analyst_commands import analyst
from gateways.cli.audit_commands import audit
from gateways.cli.bench_commands import bench
from gateways.cli.demo_analysis import analysis
from gateways.cli.demo_level1 import level1
from gateways.cli.demo_mpc import mpc
from gateways.cli.ledger_commands import demo, init
from gateways.cli.node_commands import node, relay
from gateways.cli.node_registration import set_encryption_key, set_policy
from gateways.cli.options import fail
from gateways.cli.principal_commands import principals
from gateways.cli.projection_commands import consents, projections
from gateways.cli.provider_commands import provider
from gateways.cli.recover_command import recover
from gateways.cli.rules_commands import rules_group
from gateways.cli.serve_command import serve
from infra.runtime import tune_for_throughput
from projections.base import ViewsNotOfThisLog

#: SQLite says only "attempt to write a readonly database", which names neither the file
#: nor that its directory counts too.
_READ_ONLY_HINT = (
    " (SQLite writes the database file and, beside it in its directory, its -wal and -shm"
    " files: this user needs write access to the data directory and to every file in it)"
)


class _Commands(click.Group):
    """What the machine refuses (a database that cannot be opened or read, a file that
    cannot be written, an address in use, read models of another ledger) ends every
    command as one line and exit status 1, not a traceback; Ctrl-C ends it with 130."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ViewsNotOfThisLog as exc:
            fail(str(exc))
        except (sqlite3.DatabaseError, PersistenceError, psycopg.Error) as exc:
            # one line: libpq's messages go on over lines ("Is the server running ...?")
            message = " ".join(str(exc).split())
            fail(f"the database cannot be used: {message}{_READ_ONLY_HINT if 'readonly' in message else ''}")
        except BrokenPipeError:  # stdout's reader stopped early (| head): click ends quietly
            raise
        except OSError as exc:
            fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc.strerror or exc))
        except KeyboardInterrupt:  # click would say "Aborted!" and exit 1, as for a failure
            fail("interrupted", 130)


@click.group(cls=_Commands)
@click.version_option(package_name="dfg")
def cli() -> None:
    """dfg: consent ledger and privacy-preserving health-data analytics."""


cli.add_command(init)
demo.add_command(level1)
demo.add_command(analysis)
demo.add_command(mpc)
cli.add_command(demo)
cli.add_command(audit)
cli.add_command(projections)
cli.add_command(consents)
cli.add_command(principals)
cli.add_command(rules_group)
cli.add_command(bench)
cli.add_command(serve)
cli.add_command(relay)
cli.add_command(recover)
node.add_command(set_encryption_key)
node.add_command(set_policy)
cli.add_command(node)
cli.add_command(provider)
cli.add_command(analyst)


def main() -> None:
    tune_for_throughput()
    cli()


if __name__ == "__main__":
    main()
