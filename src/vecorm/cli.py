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


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--async", "use_async", is_flag=True, help="env.py runs on an AsyncEngine.")
@click.option("--ini", "ini_path", default="alembic.ini", show_default=True,
              type=click.Path(dir_okay=False), help="Where to write alembic.ini (kept if present).")
@click.option("--metadata", "target_metadata", default="",
              help="Your models' MetaData, e.g. myapp.models:Base (stored in alembic.ini).")
def init(directory: str, use_async: bool, ini_path: str, target_metadata: str) -> None:
    """Create an Alembic environment in DIRECTORY that already imports vecorm's hooks."""
    from vecorm.scaffold import init_migrations

    for path in init_migrations(
        directory, ini_path=ini_path, use_async=use_async, target_metadata=target_metadata
    ):
        click.echo(f"created {path}")
    click.echo("next: set sqlalchemy.url (or $DATABASE_URL) and target_metadata in "
               f"{ini_path}, then `alembic revision --autogenerate -m \"...\"`")
