"""`hatcat COMMAND ...` (or `python -m hatcat COMMAND ...`): one command for HatCat's command lines.

hatcat serve        the API and the workbench (python app.py)
hatcat train        train a probe pack (python -m hatcat.train)
hatcat analyze      analyse a JSONL of texts into Parquet (python -m hatcat.analyze)
hatcat corpus       corpus jobs on Ray Data (python -m hatcat.corpus; the scale extra)
hatcat access       write the users file (python -m hatcat.access)
hatcat openwebui    install the OpenWebUI functions (python -m hatcat.openwebui)
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "serve": "app",
    "train": "hatcat.train",
    "analyze": "hatcat.analyze",
    "corpus": "hatcat.corpus",
    "access": "hatcat.access",
    "openwebui": "hatcat.openwebui.__main__",
}


def main(argv: list[str] | None = None) -> int:
    """Run the command's own `main` with the arguments after it; exit 2 with the usage for an unknown one."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: hatcat {{{','.join(COMMANDS)}}} ... (hatcat --help)", file=sys.stderr)
        return 2
    command = importlib.import_module(COMMANDS[argv[0]])
    return command.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
