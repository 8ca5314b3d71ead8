"""The demo from an installed wheel: the passages are package data, not repository files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import URL

from tests.e2e.conftest import url_text

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_runs_from_an_installed_wheel(tmp_path: Path, vecorm_url: URL) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(REPOSITORY)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("vecorm-*.whl")
    assert "vecorm/data/passages.jsonl" in zipfile.ZipFile(wheel).namelist()
    assert "vecorm/embedding/embedders/minilm/vocab.txt" in zipfile.ZipFile(wheel).namelist()
    # A plain install pulls what the library needs at run time: no server, CLI or progress bars,
    # no test plugin dependency, no particular psycopg build.
    metadata = zipfile.ZipFile(wheel).read(f"{wheel.name.split('-py3')[0]}.dist-info/METADATA")
    required = [
        line.split(":", 1)[1].strip()
        for line in metadata.decode().splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    names = sorted(re.split(r"[\[<>=!~; ]", requirement)[0].lower() for requirement in required)
    assert names == ["alembic", "numpy", "pgvector", "psycopg", "sqlalchemy"], required
    assert not any("binary" in requirement for requirement in required)
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    subprocess.run(
        [
            str(environment / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    # Dependencies from this environment; vecorm itself only from the wheel. Run elsewhere than
    # the repository so nothing can be read from its working tree.
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    env.pop("OPENAI_API_KEY", None)
    result = subprocess.run(
        [
            str(environment / "bin" / "vecorm"),
            "demo",
            "--embedder",
            "hashing",
            "--database-url",
            url_text(vecorm_url),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Loaded 65 passages into vecorm_demo_passages" in result.stdout
    located = subprocess.run(
        [str(environment / "bin" / "python"), "-c", "import vecorm; print(vecorm.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert located.stdout.startswith(str(environment))
