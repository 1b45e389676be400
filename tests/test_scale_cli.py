"""The scale-out commands refuse bad input with one line and exit status 2 before any Ray cluster
starts; the ingress finds a request's session where the API reads it. Model-free, no Ray needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.requests import Request

from hatcat.corpus import main as corpus_main
from hatcat.serve_ray import _session
from tests.support import run_main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("content, words", [("not json\n", "not JSON"), ('{"txt": "x"}\n', "text"), ("", "no texts")])
def test_corpus_cli_refuses_bad_input_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, words: str
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(content)
    code, err = run_main(corpus_main, ["analyze", "--input", str(source), "--output", str(tmp_path / "o")], capsys)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err


def test_corpus_extract_needs_a_layer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps("a text") + "\n")
    code, err = run_main(corpus_main, ["extract", "--input", str(source), "--output", str(tmp_path / "o")], capsys)
    assert code == 2 and "--layer" in err, err


def test_corpus_cli_refuses_an_output_that_exists(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps("a text") + "\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "part.parquet").write_text("")
    done = run("hatcat.corpus", "analyze", "--input", str(source), "--output", str(tmp_path / "out"))
    assert done.returncode == 2 and "already exists" in done.stderr, done.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (["--replicas", "0"], "--replicas must be >= 1"),
        (["--replicas", "2", "--min-replicas", "1"], "not both"),
        (["--min-replicas", "3", "--max-replicas", "2"], "--min-replicas <= --max-replicas"),
        (["--cpus-per-replica", "0"], "--cpus-per-replica must be > 0"),
    ],
)
def test_serve_ray_refuses_bad_scale_settings_with_one_line(args: list[str], words: str) -> None:
    done = run("hatcat.serve_ray", *args)
    assert done.returncode == 2 and words in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def request(path: str, query: str = "", headers: dict[str, str] | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "POST", "path": path, "query_string": query.encode(), "headers": raw})


def test_the_ingress_reads_the_session_from_the_header_the_query_or_the_body() -> None:
    assert _session(request("/v1/chat/completions", headers={"X-Session-Id": "h"}), b'{"session_id": "b"}') == "h"
    assert _session(request("/v1/steering/list", query="session_id=q"), b"") == "q"
    assert _session(request("/v1/chat/completions"), b'{"session_id": "b", "model": "m"}') == "b"
    assert _session(request("/v1/chat/completions"), b"not json") is None
    assert _session(request("/v1/chat/completions"), b'["session_id"]') is None
