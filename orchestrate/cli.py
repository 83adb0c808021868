"""The `mlcompress` command line: the root app, which mounts every stage's own commands, and ``main()``.

Each stage package owns its commands (``mlcompress.<stage>.cli.register``); the root only mounts them, then the
orchestration layer's own (`pipeline`, `inspect`).
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from mlcompress.errors import MlcompressError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make small, fast, language-specific models from massively multilingual transformers.")
err = Console(stderr=True, soft_wrap=True)


@app.callback()
def _root() -> None:
    """Make small, fast, language-specific models from massively multilingual transformers."""


def _mount_commands() -> None:
    """Mount the stages' commands in pipeline order, then `pipeline` and `inspect`."""
    from mlcompress.distill.cli import register as register_distill
    from mlcompress.eval.cli import register as register_eval
    from mlcompress.export.cli import register as register_export
    from mlcompress.vocab_trim.cli import register as register_trim

    from .pipeline_cli import register as register_pipeline

    register_trim(app)
    register_distill(app)
    register_export(app)
    register_eval(app)
    register_pipeline(app)


_mount_commands()


def main() -> None:
    """Entry point: run the app, turning mlcompress errors into a message, a hint and an exit code."""
    try:
        app()
    except MlcompressError as exc:
        err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        if exc.hint:
            err.print(f"[yellow]hint:[/] {exc.hint}", highlight=False)
        sys.exit(exc.exit_code)
    except OSError as exc:  # the OS refused a read or write that no stage check caught: say so, not a traceback
        from mlcompress.artifacts import is_disk_full

        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        err.print("[yellow]hint:[/] " + ("free some space on that disk, or write to another one" if is_disk_full(exc)
                                         else "check that the path exists and that you may read or write it"), highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted: the step that was running wrote nothing (outputs are renamed into place only when "
                  "complete); finished pipeline stages and distillation checkpoints are kept, and rerunning the same "
                  "command resumes from them")
        sys.exit(130)


if __name__ == "__main__":
    main()
