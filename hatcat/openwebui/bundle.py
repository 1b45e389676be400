"""The OpenWebUI functions as the single source files OpenWebUI stores and runs.

Each function module in this package imports the renderer (`hatcat.heatmap`) on one line
marked `# inlined by the installer`; `function_source` replaces that line with the renderer's
source, so what gets installed needs nothing from HatCat. The tests run exactly this text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import hatcat.heatmap

HERE = Path(__file__).resolve().parent
INLINE_MARK = "# inlined by the installer"
# OpenWebUI rewrites these prefixes anywhere in a function's text (`replace_imports`) before running it.
REWRITTEN_BY_OPENWEBUI = ("from utils", "from apps", "from main", "from config")


@dataclass(frozen=True)
class Function:
    id: str  # OpenWebUI's function id (an identifier)
    name: str
    description: str
    source: Path


FUNCTIONS = (
    Function(
        "hatcat_divergence",
        "HatCat divergence",
        "Colours each token of a HatCat answer by divergence, with a live status line",
        HERE / "divergence_filter.py",
    ),
    Function(
        "hatcat_analyze",
        "HatCat analyze",
        "Re-scores any message with HatCat's /v1/analyze and shows its tokens coloured by divergence",
        HERE / "analyze_action.py",
    ),
)


def function(function_id: str) -> Function:
    for f in FUNCTIONS:
        if f.id == function_id:
            return f
    raise KeyError(f"unknown function {function_id} (known: {', '.join(f.id for f in FUNCTIONS)})")


def function_source(function_id: str) -> str:
    """The self-contained source of one function, the renderer inlined."""
    text = function(function_id).source.read_text()
    lines = [line for line in text.splitlines() if line.rstrip().endswith(INLINE_MARK)]
    if len(lines) != 1 or not re.match(r"from hatcat\.heatmap import ", lines[0]):
        raise ValueError(f"{function_id}: expected one `from hatcat.heatmap import ...  {INLINE_MARK}` line")
    renderer = Path(hatcat.heatmap.__file__).read_text()
    inlined = f"# --- hatcat/heatmap.py (inlined) ---\n{renderer.rstrip()}\n# --- end of hatcat/heatmap.py ---"
    bundled = text.replace(lines[0], inlined, 1)
    clash = [p for p in REWRITTEN_BY_OPENWEBUI if p in bundled]
    if clash:
        raise ValueError(f"{function_id}: OpenWebUI would rewrite {clash} in the function text")
    return bundled
