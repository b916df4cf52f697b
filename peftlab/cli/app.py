"""The Typer application object; command modules register themselves on it."""

import typer

app = typer.Typer(
    name="peftlab",
    help="A command-line lab for parameter-efficient fine-tuning research.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root() -> None:
    """A command-line lab for parameter-efficient fine-tuning research.

    Train with `peftlab train method=lora`, list runs with `peftlab runs`,
    see the options with `peftlab ls methods`.
    """
