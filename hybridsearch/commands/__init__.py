"""CLI subcommands, one module each (discovered by ``hybridsearch.cli``)."""
