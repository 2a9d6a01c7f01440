"""The ``dfg`` program's entry point, kept cheap to import on purpose.

Why: worker processes are started with multiprocessing's *spawn* method (safe beside
threads), and spawn runs the parent's main module again in every child before the
child's own work. When that module is the whole command line, every signature
worker and audit segment first imports every command (the web server, the SDK,
Kafka, the MPC engine): about 1 s and 50 MB more each, measured, before it does
anything. The commands are imported only when this runs as the program.
"""

from __future__ import annotations


def main() -> None:
    try:  # importing the commands takes about a second: Ctrl-C then is no traceback either
        from gateways.cli.main import main as run
    except KeyboardInterrupt:
        import sys

        sys.stderr.write("error: interrupted\n")
        raise SystemExit(130) from None
    run()
