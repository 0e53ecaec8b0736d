"""The command line: a thin typer shell over migrate.api."""
