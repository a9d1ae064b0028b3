"""The `python -m sailk8s` command line: a thin layer that parses, calls and prints.

Subcommands live in their own modules and are imported only when invoked, so `--help`
stays fast and never imports torch.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from sailk8s import __version__, exitcodes
from sailk8s.errors import ConfigError, SailError, StoreError

# name -> "module:attribute" of a click.Command; loaded on first use.
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("sailk8s.cli.validate:validate", "Check a pipeline file; list every problem."),
    "status": ("sailk8s.cli.status:status", "Show a run: per-stage state, shards, ETA, last error."),
    "run": ("sailk8s.cli.run:run", "Run a pipeline's stages in dependency order."),
    "submit": ("sailk8s.cli.submit:submit", "Submit one stage and follow it."),
    "logs": ("sailk8s.cli.logs:logs", "Print a stage's logs, live or archived."),
    "cancel": ("sailk8s.cli.cancel:cancel", "Cancel a run or one of its stages."),
    "render": ("sailk8s.cli.render:render", "Print a stage's exact manifests (no writes)."),
    "ingest": ("sailk8s.cli.ingest:ingest", "Turn images (+alt-text) into WebDataset shards."),
    "runs": ("sailk8s.cli.runs:runs", "List the runs in a store: status, age, stages done."),
    "ui": ("sailk8s.cli.ui:ui", "Serve a read-only web dashboard of the store's runs."),
    "outputs": ("sailk8s.cli.outputs:outputs", "List which run and stage own each output prefix."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on demand."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        target, _ = COMMANDS[cmd_name]
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:
                return None  # a command that has not been built in this version
            raise
        cmd: click.Command = getattr(module, attr)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text from the table above: listing commands must not import them.
        rows = [(name, help_) for name, (_, help_) in sorted(COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="sail-pipeline")
@click.option("--log-format", type=click.Choice(["console", "json"]), default=None,
              help="Log line format (default: $SAIL_LOG_FORMAT or console).")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
              default=None, help="Log level (default: $SAIL_LOG_LEVEL or INFO).")
@click.pass_context
def cli(ctx: click.Context, log_format: str | None, log_level: str | None) -> None:
    """sail-pipeline: the SAIL-VL recipe as Kubernetes-native batch stages."""
    from sailk8s.logsetup import configure_logging
    from sailk8s.settings import load_settings

    try:
        settings = load_settings()
    except Exception as err:  # a malformed SAIL_* variable
        raise ConfigError(f"invalid SAIL_* environment setting: {err}") from None
    configure_logging(log_format or settings.log_format, log_level or settings.log_level)
    ctx.obj = settings


def main(argv: list[str] | None = None) -> Any:
    """Entry point: SailErrors become one line on stderr and an exit code of sailk8s.exitcodes."""
    try:
        return cli.main(args=argv, prog_name="python -m sailk8s", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except ConfigError as err:
        for line in err.problems:
            click.echo(f"error: {line}", err=True)
        sys.exit(exitcodes.BAD_CONFIG)
    except StoreError as err:
        # Usually transient (store down): exit 75 so a Job's retries are not wasted on it.
        click.echo(f"error: {err}", err=True)
        sys.exit(exitcodes.TEMPFAIL)
    except SailError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(exitcodes.APP_ERROR)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
