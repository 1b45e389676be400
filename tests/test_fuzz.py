"""The schemathesis fuzz of `/v1` with access control on: several seeds, no 5xx (slow tier)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hatcat.paths import ROOT


@pytest.mark.slow
def test_fuzzing_v1_with_auth_on_finds_no_server_error(small_probe_pack: Path, tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    command = [sys.executable, "-m", "experiments.fuzz_api", "--probe-pack", str(small_probe_pack)]
    command += ["--seeds", "11", "12", "--max-time", "60", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200, check=False)
    assert out.is_file(), done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["server_errors_5xx"] == 0, result["server_error_operations"]
    assert result["cases_run"] > 100 and result["responses_by_status"].get("200", 0) > 0
    assert done.returncode == 0
