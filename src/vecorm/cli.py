"""The ``vecorm`` command.

    vecorm demo             # the README's demo on the embedded server
    vecorm --help

User mistakes end in one clear line and a hint, never a traceback.
"""

from __future__ import annotations

import click

from vecorm.errors import VecormError


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except VecormError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group)
@click.version_option(package_name="vecorm")
def main() -> None:
    """vecorm: embeddings and hybrid search for SQLAlchemy models on PostgreSQL + pgvector."""


@main.command()
@click.option(
    "--database-url",
    envvar="VECORM_DATABASE_URL",
    default=None,
    help="Use this server instead of the embedded one.",
)
def demo(database_url: str | None) -> None:
    """Create a small knowledge base on the embedded server and search it."""
    from vecorm.demo import run_demo

    run_demo(database_url, echo=click.echo)
