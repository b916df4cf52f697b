"""The Typer application object; command modules register themselves on it."""

import typer

app = typer.Typer(
    name="peftlab",
    help="A command-line lab for parameter-efficient fine-tuning research.",
    no_args_is_help=True,
    # --install-completion / --show-completion, as the CLI framework provides them.
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def package_version() -> str:
    """The installed distribution's version (read from its metadata: no heavy import)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("peftlab")
    except PackageNotFoundError:  # a source tree on sys.path without an install
        from peftlab import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"peftlab {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """A command-line lab for parameter-efficient fine-tuning research.

    Train with `peftlab train method=lora`, list runs with `peftlab runs`,
    see the options with `peftlab ls methods`.
    """
