"""`python -m hatcat.openwebui`: install HatCat's functions into OpenWebUI, or print one of them."""

from __future__ import annotations

import argparse
import os
import sys

import httpx

from hatcat.openwebui.bundle import FUNCTIONS, function_source
from hatcat.openwebui.install import InstallError, install


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hatcat.openwebui", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    inst = commands.add_parser("install", help="create or update the functions, activate them, make them global")
    inst.add_argument("--url", required=True, help="OpenWebUI's base URL, e.g. http://localhost:3000")
    inst.add_argument("--email", required=True, help="an OpenWebUI admin's email")
    inst.add_argument(
        "--password",
        default=os.environ.get("OPENWEBUI_ADMIN_PASSWORD"),
        help="that admin's password (default: $OPENWEBUI_ADMIN_PASSWORD)",
    )
    inst.add_argument(
        "--hatcat-url", help="HatCat as OpenWebUI reaches it (the Action's valve), e.g. http://hatcat:8765"
    )
    inst.add_argument("--api-key", help="HatCat's HATCAT_API_KEY (the Action's valve)")
    inst.add_argument("--wait", type=float, default=0.0, help="seconds to wait for OpenWebUI's /health first")
    show = commands.add_parser("source", help="print one function's self-contained source")
    show.add_argument("function", choices=[f.id for f in FUNCTIONS])
    args = parser.parse_args(argv)

    if args.command == "source":
        sys.stdout.write(function_source(args.function))
        return 0
    if not args.password:
        parser.error("--password (or $OPENWEBUI_ADMIN_PASSWORD) is required")
    try:
        installed = install(args.url, args.email, args.password, args.hatcat_url, args.api_key, args.wait)
    except (InstallError, httpx.HTTPError) as err:
        print(f"hatcat.openwebui install: {err}", file=sys.stderr)
        return 1
    for fn in installed:
        valves = f", valves set: {', '.join(fn['valves'])}" if fn["valves"] else ""
        print(f"{fn['action']} {fn['type']} {fn['id']}: active, global{valves}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
