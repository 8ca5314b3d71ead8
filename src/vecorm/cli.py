"""The ``vecorm`` command.

    vecorm demo             # the README's demo on the embedded server
    vecorm adopt myapp.models:Document   # take over vectors already in the table
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


@main.command()
@click.argument("model_path", metavar="MODULE:MODEL")
@click.option(
    "--re-embed",
    is_flag=True,
    help="Embed the rows again with the provider instead of recording their vectors.",
)
@click.option(
    "--embedder",
    "embedder_path",
    default=None,
    metavar="MODULE:NAME",
    help="The provider (default: the model's SearchConfig(embedder=...)). Without "
    "--re-embed only its model_name and dimensions are read.",
)
@click.option(
    "--database-url",
    envvar=["VECORM_DATABASE_URL", "DATABASE_URL"],
    default=None,
    help="The database (default: $VECORM_DATABASE_URL, then $DATABASE_URL).",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=None, help="Rows per transaction."
)
@click.option(
    "--progress/--no-progress",
    default=True,
    show_default=True,
    help="Show a progress bar on stderr.",
)
def adopt(
    model_path: str,
    re_embed: bool,
    embedder_path: str | None,
    database_url: str | None,
    batch_size: int | None,
    progress: bool,
) -> None:
    """Take over the vectors already stored for MODULE:MODEL (see docs/adopting.md).

    Records each existing vector as current for its row's text, without calling the provider;
    with --re-embed, embeds the rows again instead.
    """
    import os
    import sys

    from sqlalchemy import create_engine, make_url
    from sqlalchemy.orm import Session

    from vecorm.adopt import adopt as adopt_model
    from vecorm.alembic.operations import import_model, import_object

    if not database_url:
        raise click.UsageError("pass --database-url or set DATABASE_URL")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # so `myapp.models` imports from the project root
    model = import_model(model_path)
    embedder = import_object(embedder_path) if embedder_path else None
    url = make_url(database_url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            result = adopt_model(
                session,
                model,
                embedder=embedder,
                re_embed=re_embed,
                batch_size=batch_size,
                progress=progress,
            )
    finally:
        engine.dispose()
    name = model.__name__
    if re_embed:
        calls = f"{result.calls} provider call{'' if result.calls == 1 else 's'}"
        click.echo(f"{name}: embedded {result.embedded} rows in {calls}")
    else:
        click.echo(
            f"{name}: recorded {result.recorded} existing vectors as current (no provider calls)"
        )
    if result.missing:
        click.echo(
            f"{name}: {result.missing} rows have text but no vector; "
            f"`vecorm adopt {model_path} --re-embed` embeds them (recorded rows are kept)"
        )
