"""The record store on a real PostgreSQL server (Debian's `postgresql`), started here in a
temporary folder: migrations, writes, and what survives a reopen (slow tier)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hatcat.store import Store
from tests.support import free_port
from tests.test_records import EVENT

BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the `postgres` user when we are root."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    if not BIN:
        pytest.skip("Debian's postgresql is not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg")
    bin_dir = BIN[-1].parent
    # not under pytest's root-only temporary folder: the postgres user must reach it
    folder = Path(tempfile.mkdtemp(prefix="hatcat-postgres-"))
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    subprocess.run(
        _as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]),
        check=True,
        capture_output=True,
    )
    port = free_port()
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    subprocess.run(
        _as_postgres(
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"]
        ),
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            _as_postgres([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "hatcat"]),
            check=True,
            capture_output=True,
        )
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/hatcat"
    finally:
        subprocess.run(
            _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_postgres_store_migrates_and_keeps_records_across_reopens(postgres_url: str) -> None:
    store = Store(postgres_url)
    store.audit("ada", "pack_loaded", "pack-x", checksum="abc")
    store.add_events([EVENT])
    store.save_profile("strict", "rex", "p", {"Fear": 0.7}, admin=False)
    store.engine.dispose()
    again = Store(postgres_url)  # a restart: the migration finds the schema at head
    assert [r["target"] for r in again.audit_log(action="pack_loaded")] == ["pack-x"]
    assert again.events(concept="Fear")[0]["excerpt"] == "so afraid"
    assert again.mark([again.events()[0]["id"]], "false_positive", "ada") == 1
    assert again.events(review="false_positive")[0]["reviewed_by"] == "ada"
    assert again.profile("strict")["thresholds"] == {"Fear": 0.7}


@pytest.mark.slow
def test_an_unreachable_postgres_is_one_line() -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(Exception, match="cannot be opened") as err:
        Store(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/hatcat")
    assert "\n" not in str(err.value) and "postgres@" not in str(err.value).split("127.0.0.1")[0][-20:]
