"""The OpenWebUI functions as the single source files OpenWebUI stores and runs.

Each function module in this package imports HatCat's standard-library-only modules (the renderer
`hatcat.heatmap`, the compact embed `hatcat.openwebui.passages`) on lines marked `# inlined by the
installer`; `function_source` replaces each such line with that module's source (its own marked
lines inlined the same way, each module once), so what gets installed needs nothing from HatCat.
The tests run exactly this text.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path

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
    """The self-contained source of one function, HatCat's modules it imports inlined."""
    bundled = _inline(function(function_id).source.read_text(), set())
    if "from hatcat" in bundled or "import hatcat" in bundled:
        raise ValueError(f"{function_id}: imports HatCat on a line without `{INLINE_MARK}`")
    clash = [p for p in REWRITTEN_BY_OPENWEBUI if p in bundled]
    if clash:
        raise ValueError(f"{function_id}: OpenWebUI would rewrite {clash} in the function text")
    return bundled


def _inline(text: str, done: set[str]) -> str:
    """`text` with each marked `from hatcat... import` line replaced by that module's (inlined) source."""
    for line in [line for line in text.splitlines() if line.rstrip().endswith(INLINE_MARK)]:
        match = re.match(r"from (hatcat(?:\.\w+)+) import ", line)
        if match is None:
            raise ValueError(f"expected `from hatcat.<module> import ...  {INLINE_MARK}`, got {line!r}")
        module = match.group(1)
        source = "" if module in done else _inline(Path(importlib.import_module(module).__file__).read_text(), done)
        done.add(module)
        inlined = f"# --- {module} (inlined) ---\n{source.rstrip()}\n# --- end of {module} ---" if source else ""
        text = text.replace(line, inlined, 1)
    return text
