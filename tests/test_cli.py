"""The `hatcat` command (pyproject's console script, also `python -m hatcat`) dispatches to each module's CLI."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from hatcat.__main__ import COMMANDS, main
from hatcat.paths import ROOT
from tests.support import run_main


def test_the_console_script_is_the_dispatcher() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"hatcat": "hatcat.__main__:main"}
    done = subprocess.run(
        [sys.executable, "-m", "hatcat", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and all(f"hatcat {name}" in done.stdout for name in COMMANDS), done.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_answers_help_with_exit_0(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run_main(main, [command, "--help"], capsys)
    assert code == 0


def test_an_unknown_subcommand_exits_2_with_the_usage(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(main, ["serv"], capsys)
    assert code == 2 and "usage: hatcat {serve," in err


@pytest.mark.slow  # loads the embedded model
def test_the_readme_python_example_analyses_texts_into_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    readme = (ROOT / "README.md").read_text()
    code = readme.split("### Use it from Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    table = namespace["table"]
    assert table.num_rows == 2 and table.column("text").to_pylist() == namespace["texts"]
    assert all(-1.0 <= d <= 1.0 for d in table.column("max_divergence").to_pylist())
    assert "max_divergence" in capsys.readouterr().out
