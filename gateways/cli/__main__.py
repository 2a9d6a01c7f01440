"""``python -m gateways.cli``: the ``dfg`` program (see ``gateways.cli.entry`` for why
a spawned child re-running this module must find nothing to import)."""

if __name__ == "__main__":
    from gateways.cli.entry import main

    main()
