"""The ``vecorm`` console script: the command line comes with ``pip install 'vecorm[cli]'``, and
without it the script says so instead of printing a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    """Run ``vecorm`` (:func:`vecorm.tools.cli.main`), or explain how to install it."""
    try:
        from vecorm.tools.cli import main as cli_main
    except ModuleNotFoundError as exc:
        if exc.name not in ("click", "tqdm"):
            raise
        sys.stderr.write(
            f"the vecorm command needs {exc.name}: pip install 'vecorm[cli]' "
            "(and 'vecorm[demo]' for the demo's embedded PostgreSQL)\n"
        )
        raise SystemExit(2) from None
    cli_main()
