"""A real OpenWebUI in front of a real HatCat server: sign up, list models, chat, and prove the
answer came from HatCat. Opt-in (not in CI: OpenWebUI is a large install).

    python -m experiments.openwebui_roundtrip                         # starts its own HatCat server
    python -m experiments.openwebui_roundtrip --hatcat-url http://127.0.0.1:8765 --hatcat-key KEY

Steps, each recorded with pass/fail, seconds and details in `results/openwebui.json`:

1. install  - `open-webui` in its own venv (default ~/.cache/hatcat/openwebui-venv, Python 3.11),
              installed from PyPI if absent (CPU torch first, so pip does not pull a CUDA build);
2. hatcat   - our server (`python app.py` on a free loopback port with a random API key), or the one given;
              with no probe pack in probes/ (and no --probe-pack), a small one is trained first
              (`python -m hatcat.train --concepts ...`, about a minute) so that the answer is monitored;
3. start    - `open-webui serve` on loopback, pointed at `<hatcat>/v1` with the key, sign-up on,
              Ollama off, offline (no hub downloads, no RAG embedding model, no update check), its
              DATA_DIR in a temporary folder;
4. admin    - sign in as the admin OpenWebUI created at start-up (`WEBUI_ADMIN_EMAIL`/`WEBUI_ADMIN_PASSWORD`);
5. models   - `GET /api/models` lists `hatcat-divergence`;
6. chat     - `POST /api/chat/completions` through OpenWebUI (model hatcat-divergence, stream false,
              greedy, a few tokens);
7. provenance - the answer came from HatCat: the OpenWebUI response carries HatCat's own `hatcat`
              report field; HatCat's /metrics counted exactly one more chat completion and the
              answer's completion tokens; the same request sent straight to HatCat gives the same text;
8. stream   - the same chat streamed through OpenWebUI: HatCat's per-token divergence metadata
              (`choices[0].delta.metadata.divergence`) reaches the client;
9. ui_chat_before_install - a chat as the web page sends it (`chat_id`/`parent_id`, `id`,
              `session_id`, stream, no `max_tokens`: HatCat's default length): saved in OpenWebUI,
              plain text, no embed; each turn records its length and seconds until saved;
10. function_installed - `python -m hatcat.openwebui install` (run twice: create, then update):
              both functions active and global, the stored source is exactly the tested bundle;
11. ui_chat  - a second turn in that chat: the Filter's compact embed (the answer's coloured passages)
              and its status history (the last one done) are saved on the message (`GET /api/v1/chats/{id}`);
12. action   - the Action on the older (first) message (`POST /api/chat/actions/hatcat_analyze`):
              its embed, re-scored through `/v1/analyze`, is saved on that message;
13. server_event_line - the zero-install path: the Filter switched off, `X-HatCat-OpenWebUI-Events: 1`
              set on OpenWebUI's connection (`/openai/config/update`); a third turn's embed and its
              one (final) status come from HatCat's own event lines;
14. embed_rendered - the chat page in headless Chromium (Debian's): every answer shows the embed's
              tokens in its iframe, at least one really coloured (not white: zero divergence is white),
              resized to its content; `results/screenshots/openwebui.png`.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import platform
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from hatcat.openwebui.passages import GAP
from hatcat.paths import RESULTS, ROOT
from tests.support import SMALL_PACK, free_port, wait_http

RESULT = RESULTS / "openwebui.json"
DEFAULT_VENV = Path.home() / ".cache" / "hatcat" / "openwebui-venv"
MODEL_ID = "hatcat-divergence"
PROMPT = "The capital of France is"
MAX_TOKENS = 6
ADMIN_EMAIL = "admin@hatcat.example.org"
SHOT = RESULTS / "screenshots" / "openwebui.png"
CHROMIUM = "/usr/bin/chromium"
EMBED_IFRAME = 'iframe[srcdoc*="hc-tok"]'  # OpenWebUI's embed iframes holding HatCat's document
UNCOLOURED = ("", "rgba(0, 0, 0, 0)", "rgb(255, 255, 255)")  # no background, or white (zero divergence)


@dataclass
class Run:
    steps: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def step(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run one step; an exception or a falsy `ok` fails it (and the run stops after it)."""
        start = time.perf_counter()
        try:
            detail = fn()
            ok = bool(detail.pop("ok", True))
        except Exception as err:  # noqa: BLE001 - the reason goes into the result file
            detail, ok = {"error": f"{type(err).__name__}: {err}"}, False
        record = {"step": name, "passed": ok, "seconds": round(time.perf_counter() - start, 2), **detail}
        self.steps.append(record)
        print(f"[{'PASS' if ok else 'FAIL'}] {name} ({record['seconds']} s) {json.dumps(detail)[:400]}", flush=True)
        if not ok:
            raise StepFailed(name)
        return detail


class StepFailed(RuntimeError):
    pass


def rss_mib(pid: int) -> float | None:
    """Resident memory of a process and its children (MiB), from /proc."""
    total, found = 0, False
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
        except OSError:
            continue
        ppid = int(re.search(r"^PPid:\s+(\d+)", status, re.MULTILINE).group(1))
        if int(proc.name) == pid or ppid == pid:
            match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
            if match:
                total, found = total + int(match.group(1)), True
    return round(total / 1024, 1) if found else None


def metric(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of `name` whose labels include `labels`, from Prometheus text."""
    value = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        match = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})?\s+(\S+)$", line)
        if not match:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(got.get(k) == v for k, v in (labels or {}).items()):
            value += float(match.group(2))
    return value


def stop(proc: subprocess.Popen | None) -> None:
    """End a process this script started (its own process group) and nothing else."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def install_functions(webui: str, password: str, hatcat_url: str, key: str) -> dict[str, Any]:
    """The installer's CLI, twice (create, then update), and what OpenWebUI then holds."""
    from hatcat.openwebui.bundle import FUNCTIONS, function_source

    command = [sys.executable, "-m", "hatcat.openwebui", "install", "--url", webui, "--email", ADMIN_EMAIL]
    command += ["--password", password, "--hatcat-url", hatcat_url, "--api-key", key]
    runs = [subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False) for _ in (1, 2)]
    token = httpx.post(
        f"{webui}/api/v1/auths/signin", json={"email": ADMIN_EMAIL, "password": password}, timeout=30
    ).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    held = {}
    for fn in FUNCTIONS:
        got = httpx.get(f"{webui}/api/v1/functions/id/{fn.id}", headers=headers, timeout=30).json()
        held[fn.id] = {
            "type": got["type"],
            "is_active": got["is_active"],
            "is_global": got["is_global"],
            "source_is_the_tested_bundle": got["content"] == function_source(fn.id),
            "source_chars": len(got["content"]),
        }
    ok = all(r.returncode == 0 for r in runs) and all(
        h["is_active"] and h["is_global"] and h["source_is_the_tested_bundle"] for h in held.values()
    )
    return {
        "ok": ok,
        "installer_output": [(r.stdout + r.stderr).strip().splitlines() for r in runs],
        "functions": held,
    }


def embed_tokens_text(document: str) -> str:
    """The text of an embed's token spans, in order."""
    return html.unescape("".join(re.findall(r'<span class="hc-tok"[^>]*>([^<]*)</span>', document)))


def summary_tokens(document: str) -> int | None:
    """The answer's length in tokens, from an embed's summary line."""
    match = re.search(r"(\d+) tokens", document)
    return int(match.group(1)) if match else None


def passages_of(embed_text: str, answer: str) -> bool:
    """Whether a compact embed shows passages of the answer: at least one, each in the answer's text."""
    parts = [part.strip() for part in embed_text.split(GAP.strip()) if part.strip()]
    return bool(parts) and all(part in answer for part in parts)


def answer_text(content: str) -> str:
    """A saved answer without the analysis line HatCat appends."""
    return content.split("\n\n**Analysis**:")[0]


class UIChat:
    """One OpenWebUI chat driven as its web page drives it: turns sent with `session_id`, answered in the background."""

    def __init__(self, webui: str, token: str) -> None:
        self.webui, self.headers = webui, {"Authorization": f"Bearer {token}"}
        self.chat_id: str | None = None
        self.assistant_ids: list[str] = []
        self.session_id = f"hatcat-roundtrip-{secrets.token_hex(4)}"

    def chat(self) -> dict[str, Any]:
        r = httpx.get(f"{self.webui}/api/v1/chats/{self.chat_id}", headers=self.headers, timeout=30)
        r.raise_for_status()
        return r.json()["chat"]

    def wait_done(self, message_id: str, timeout: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.chat()["history"]["messages"].get(message_id) or {}
            if message.get("done"):
                return message
            time.sleep(1)
        raise TimeoutError(f"message {message_id} not done within {timeout:.0f} s")

    def turn(self, prompt: str, expect_embed: bool) -> dict[str, Any]:
        user_id, assistant_id = str(uuid.uuid4()), str(uuid.uuid4())
        parent = self.assistant_ids[-1] if self.assistant_ids else None
        history = []
        if self.chat_id:
            messages = self.chat()["history"]["messages"]
            history = [{"role": m["role"], "content": m["content"]} for m in messages.values()]
        body = {
            "model": MODEL_ID,
            "messages": [*history, {"role": "user", "content": prompt}],
            "stream": True,  # no max_tokens, as the page sends none: HatCat's default answer length
            "temperature": 0,
            "seed": 7,
            "parent_id": parent,
            "user_message": {
                "id": user_id,
                "role": "user",
                "content": prompt,
                "parentId": parent,
                "childrenIds": [],
                "timestamp": int(time.time()),
                "models": [MODEL_ID],
            },
            "id": assistant_id,
            "session_id": self.session_id,
            **({"chat_id": self.chat_id} if self.chat_id else {}),
        }
        sent = time.perf_counter()
        r = httpx.post(f"{self.webui}/api/chat/completions", json=body, headers=self.headers, timeout=120)
        r.raise_for_status()
        answer = r.json()
        self.chat_id = self.chat_id or answer.get("chat_id")
        self.assistant_ids.append(assistant_id)
        message = self.wait_done(assistant_id)
        answered_s = round(time.perf_counter() - sent, 1)
        embeds = message.get("embeds") or []
        statuses = message.get("statusHistory") or []
        embed_text = embed_tokens_text(embeds[0]) if embeds else ""
        content = message.get("content") or ""
        checks = (
            {
                "one_embed": len(embeds) == 1,
                "embed_shows_passages_of_the_answer": passages_of(embed_text, answer_text(content)),
                "status_history_ends_done": bool(statuses) and statuses[-1].get("done") is True,
            }
            if expect_embed
            else {"no_embed": not embeds, "text_saved": bool(content)}
        )
        return {
            "ok": all(checks.values()),
            **checks,
            "response": answer,
            "chat_id": self.chat_id,
            "message_id": assistant_id,
            "content": content,
            "answer_seconds": answered_s,
            "answer_tokens": summary_tokens(embeds[0]) if embeds else None,
            "embed_text": embed_text,
            "status_history": [s.get("description") for s in statuses],
        }

    def action_on_first(self) -> dict[str, Any]:
        first = self.assistant_ids[0]
        messages = self.chat()["history"]["messages"]
        body = {
            "model": MODEL_ID,
            "messages": [{"id": m["id"], "role": m["role"], "content": m["content"]} for m in messages.values()],
            "chat_id": self.chat_id,
            "session_id": self.session_id,
            "id": first,
        }
        r = httpx.post(f"{self.webui}/api/chat/actions/hatcat_analyze", json=body, headers=self.headers, timeout=300)
        message = self.chat()["history"]["messages"][first]
        embeds = message.get("embeds") or []
        embed_text = embed_tokens_text(embeds[0]) if embeds else ""
        text = answer_text(message.get("content") or "")
        return {
            "ok": r.status_code == 200 and len(embeds) == 1 and bool(text) and passages_of(embed_text, text),
            "status": r.status_code,
            "response": r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text[:300],
            "message_id": first,
            "embeds_on_older_message": len(embeds),
            "embed_text": embed_text,
        }


def server_event_line(webui: str, token: str, ui: UIChat) -> dict[str, Any]:
    """The zero-install path: the Filter switched off, the opt-in header set on OpenWebUI's connection
    to HatCat; a new turn's embed and status come from HatCat's own event lines."""
    from hatcat.api.openwebui_events import HEADER

    headers = {"Authorization": f"Bearer {token}"}
    toggled = httpx.post(f"{webui}/api/v1/functions/id/hatcat_divergence/toggle", headers=headers, timeout=30)
    toggled.raise_for_status()
    config = httpx.get(f"{webui}/openai/config", headers=headers, timeout=30).json()
    config["OPENAI_API_CONFIGS"] = {"0": {"enable": True, "headers": {HEADER: "1"}}}
    httpx.post(f"{webui}/openai/config/update", json=config, headers=headers, timeout=30).raise_for_status()
    turn = ui.turn("Write about loud music at night.", expect_embed=True)
    only_the_server = turn["status_history"] and all(s.startswith("max divergence") for s in turn["status_history"])
    checks = {
        "filter_off": toggled.json()["is_active"] is False,
        "one_final_status_only": len(turn["status_history"]) == 1 and bool(only_the_server),
    }
    return {**turn, **checks, "ok": turn["ok"] and all(checks.values())}


def screenshot(webui: str, token: str, chat_id: str, messages: int) -> dict[str, Any]:
    """The chat in OpenWebUI's own page, in Debian's headless Chromium: every assistant message shows its embed."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        # tall enough for the whole chat: OpenWebUI scrolls its message pane, not the page
        page = browser.new_page(viewport={"width": 1280, "height": 3000})
        page.goto(f"{webui}/auth", wait_until="domcontentloaded", timeout=120_000)
        page.evaluate("t => localStorage.setItem('token', t)", token)
        page.goto(f"{webui}/c/{chat_id}", wait_until="domcontentloaded", timeout=120_000)
        embeds = page.locator(EMBED_IFRAME)
        embeds.nth(messages - 1).wait_for(timeout=120_000)
        whats_new = page.get_by_role("button", name="Okay, Let's Go!")  # the release notes shown on a first visit
        try:
            whats_new.click(timeout=10_000)
        except PlaywrightTimeout:
            pass
        frames, coloured = page.frame_locator(EMBED_IFRAME), []
        for i in range(embeds.count()):
            spans = frames.nth(i).locator(".hc-tok")
            spans.first.wait_for(timeout=60_000)
            colours = [spans.nth(k).evaluate("e => getComputedStyle(e).backgroundColor") for k in range(spans.count())]
            coloured.append(sum(c not in UNCOLOURED for c in colours))
        # each embed posts its height; OpenWebUI resizes its iframe from the 150 px it starts at
        resized = True
        try:
            page.wait_for_function(
                f"() => [...document.querySelectorAll('{EMBED_IFRAME}')].every(f => f.offsetHeight > 150)",
                timeout=30_000,
            )
        except PlaywrightTimeout:
            resized = False
        first = embeds.evaluate_all("fs => fs.map(f => f.offsetHeight)")
        page.wait_for_timeout(6000)  # the embeds re-send their height for a few seconds: it must stay put
        heights = embeds.evaluate_all("fs => fs.map(f => f.offsetHeight)")
        page.mouse.move(1270, 5)  # no hover tooltip in the picture
        page.wait_for_timeout(1000)
        SHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOT), full_page=True)
        browser.close()
    return {
        "ok": len(coloured) >= messages and all(coloured) and resized and heights == first,
        "iframe_heights_stable": heights == first,
        "iframes_resized_to_their_content": resized,
        "iframes": len(coloured),
        "coloured_tokens_per_iframe": coloured,
        "iframe_heights_px": heights,
        "screenshot": str(SHOT.relative_to(ROOT)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hatcat-url", help="a running HatCat server (default: start one)")
    parser.add_argument("--hatcat-key", default=None, help="its HATCAT_API_KEY (with --hatcat-url)")
    parser.add_argument(
        "--probe-pack",
        type=Path,
        default=None,
        help="probe pack for the server started here (default: probes/, else train a small one)",
    )
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="OpenWebUI's venv (created if absent)")
    parser.add_argument("--openwebui-version", default="0.12.4", help="open-webui version to install if absent")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for each server to start")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()

    run = Run()
    run.info.update(
        {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), {platform.system()} {platform.release()}",
            "hatcat_commit": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
            ).stdout.strip(),
            # other work in progress in the checkout (modified tracked files) at the time of the run
            "hatcat_tree_modified": bool(
                subprocess.run(
                    ["git", "status", "--porcelain", "-uno"], cwd=ROOT, capture_output=True, text=True, check=False
                ).stdout.strip()
            ),
            "prompt": PROMPT,
            "max_tokens": MAX_TOKENS,
        }
    )
    workdir = Path(tempfile.mkdtemp(prefix="hatcat-openwebui-"))
    hatcat_proc = webui_proc = None
    ow_python = args.venv / "bin" / "python"
    key = args.hatcat_key or secrets.token_urlsafe(16)
    hatcat_url = (args.hatcat_url or "").rstrip("/")
    webui_port = free_port()
    webui = f"http://127.0.0.1:{webui_port}"
    webui_log = workdir / "open-webui.log"
    admin_password = secrets.token_urlsafe(16) + "Aa1!"
    hatcat_log = workdir / "hatcat.log"
    state: dict[str, Any] = {}

    def install() -> dict[str, Any]:
        installed_now = False
        if not (args.venv / "bin" / "open-webui").exists():
            installed_now = True
            subprocess.run(
                [sys.executable if sys.version_info[:2] == (3, 11) else "python3.11", "-m", "venv", str(args.venv)],
                check=True,
            )
            pip = [str(ow_python), "-m", "pip", "install", "-q"]
            # CPU torch first (on these machines a local wheel); otherwise pip would take a CUDA build of several GB
            subprocess.run([*pip, "torch==2.13.0"], check=True)
            subprocess.run([*pip, f"open-webui=={args.openwebui_version}"], check=True)
        versions = subprocess.run(
            [
                str(ow_python),
                "-c",
                (
                    "import importlib.metadata as m, sys, json; "
                    "print(json.dumps({'open-webui': m.version('open-webui'), 'python': sys.version.split()[0], "
                    "'torch': m.version('torch')}))"
                ),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        run.info["openwebui"] = json.loads(versions)
        return {"installed_now": installed_now, "venv": str(args.venv), **json.loads(versions)}

    def hatcat() -> dict[str, Any]:
        nonlocal hatcat_proc, hatcat_url
        trained = None
        if not hatcat_url:
            port = free_port()
            hatcat_url = f"http://127.0.0.1:{port}"
            env = {**os.environ, "HATCAT_HOST": "127.0.0.1", "HATCAT_PORT": str(port), "HATCAT_API_KEY": key}
            pack = args.probe_pack
            if pack is None and not any((ROOT / "probes").glob("*/*/manifest.json")):
                pack, start = workdir / "probe-pack", time.perf_counter()
                subprocess.run(
                    [sys.executable, "-m", "hatcat.train", "--concepts", *SMALL_PACK, "--out", str(pack)],
                    cwd=ROOT,
                    check=True,
                    stdout=hatcat_log.open("w"),
                    stderr=subprocess.STDOUT,
                )
                trained = {"concepts": list(SMALL_PACK), "seconds": round(time.perf_counter() - start, 1)}
            if pack is not None:
                env["HATCAT_PROBE_PACK"] = str(pack)
            hatcat_proc = subprocess.Popen(
                [sys.executable, "app.py"],
                cwd=ROOT,
                env=env,
                stdout=hatcat_log.open("a"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        waited = wait_http(f"{hatcat_url}/health", args.timeout, hatcat_proc, hatcat_log)
        health = httpx.get(f"{hatcat_url}/health", timeout=10).json()
        models = httpx.get(f"{hatcat_url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        unauthenticated = httpx.get(f"{hatcat_url}/v1/models", timeout=10).status_code
        run.info["hatcat"] = {
            k: health.get(k) for k in ("model", "device", "dtype", "probe_pack", "monitoring") if k in health
        }
        return {
            "ok": models.status_code == 200 and unauthenticated == 401,
            "started_here": hatcat_proc is not None,
            "small_probe_pack_trained": trained,
            "ready_after_s": round(waited, 1),
            "health": run.info["hatcat"],
            "v1_models_status_with_key": models.status_code,
            "v1_models_status_without_key": unauthenticated,
        }

    def start() -> dict[str, Any]:
        nonlocal webui_proc
        data_dir = workdir / "data"
        data_dir.mkdir()
        env = {
            **os.environ,
            "DATA_DIR": str(data_dir),
            "WEBUI_SECRET_KEY": secrets.token_urlsafe(24),
            "WEBUI_AUTH": "true",
            "WEBUI_ADMIN_EMAIL": ADMIN_EMAIL,
            "WEBUI_ADMIN_PASSWORD": admin_password,
            "WEBUI_NAME": "HatCat",
            "ENABLE_OLLAMA_API": "false",
            "ENABLE_OPENAI_API": "true",
            "OPENAI_API_BASE_URLS": f"{hatcat_url}/v1",
            "OPENAI_API_KEYS": key,
            "DEFAULT_MODELS": MODEL_ID,
            # nothing can be fetched from a hub here: no embedding/reranking/whisper models, no update check
            "OFFLINE_MODE": "true",
            "HF_HUB_OFFLINE": "1",
            "RAG_EMBEDDING_ENGINE": "openai",
            "BYPASS_EMBEDDING_AND_RETRIEVAL": "true",
            "RAG_EMBEDDING_MODEL_AUTO_UPDATE": "false",
            "RAG_RERANKING_MODEL_AUTO_UPDATE": "false",
            "WHISPER_MODEL_AUTO_UPDATE": "false",
            "ENABLE_VERSION_UPDATE_CHECK": "false",
            # no extra generations on HatCat's one-at-a-time engine (titles, tags, follow-ups)
            "ENABLE_TITLE_GENERATION": "false",
            "ENABLE_TAGS_GENERATION": "false",
            "ENABLE_FOLLOW_UP_GENERATION": "false",
            "ENABLE_AUTOCOMPLETE_GENERATION": "false",
            "ANONYMIZED_TELEMETRY": "false",
            "SCARF_NO_ANALYTICS": "true",
            "DO_NOT_TRACK": "true",
            "UVICORN_WORKERS": "1",
        }
        for name in ("HATCAT_API_KEY", "HATCAT_PORT", "HATCAT_HOST", "PORT", "VIRTUAL_ENV"):
            env.pop(name, None)
        env["PATH"] = f"{args.venv / 'bin'}:{env.get('PATH', '')}"
        webui_proc = subprocess.Popen(
            [str(args.venv / "bin" / "open-webui"), "serve", "--host", "127.0.0.1", "--port", str(webui_port)],
            cwd=workdir,
            env=env,
            stdout=webui_log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        waited = wait_http(f"{webui}/health", args.timeout, webui_proc, webui_log)
        config = httpx.get(f"{webui}/api/config", timeout=10).json()
        return {
            "ready_after_s": round(waited, 1),
            "url": webui,
            "name": config.get("name"),
            "version": config.get("version"),
            "rss_mib": rss_mib(webui_proc.pid),
        }

    def admin() -> dict[str, Any]:
        r = httpx.post(
            f"{webui}/api/v1/auths/signin", json={"email": ADMIN_EMAIL, "password": admin_password}, timeout=30
        )
        r.raise_for_status()
        user = r.json()
        state["token"] = user["token"]
        return {
            "ok": bool(user.get("token")) and user.get("role") == "admin",
            "status": r.status_code,
            "role": user.get("role"),
        }

    def models() -> dict[str, Any]:
        r = httpx.get(f"{webui}/api/models", headers={"Authorization": f"Bearer {state['token']}"}, timeout=60)
        r.raise_for_status()
        listed = [m["id"] for m in r.json()["data"]]
        return {"ok": MODEL_ID in listed, "status": r.status_code, "models": listed}

    def chat_body(stream: bool) -> dict[str, Any]:
        return {
            "model": MODEL_ID,
            "messages": [{"role": "user", "content": PROMPT}],
            "stream": stream,
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "seed": 7,
        }

    def our_metrics() -> str:
        return httpx.get(f"{hatcat_url}/metrics", timeout=10).text

    def chat() -> dict[str, Any]:
        before = our_metrics()
        start = time.perf_counter()
        r = httpx.post(
            f"{webui}/api/chat/completions",
            json=chat_body(False),
            headers={"Authorization": f"Bearer {state['token']}"},
            timeout=600,
        )
        seconds = time.perf_counter() - start
        r.raise_for_status()
        answer = r.json()
        state.update(before=before, after=our_metrics(), answer=answer)
        text = answer["choices"][0]["message"]["content"]
        return {
            "ok": isinstance(text, str) and bool(text),
            "status": r.status_code,
            "latency_s": round(seconds, 2),
            "text": text,
            "usage": answer.get("usage"),
            "finish_reason": answer["choices"][0].get("finish_reason"),
        }

    def provenance() -> dict[str, Any]:
        answer, before, after = state["answer"], state["before"], state["after"]
        text = answer["choices"][0]["message"]["content"]
        route = {"route": "/v1/chat/completions", "method": "POST", "status": "200"}
        chats = metric(after, "hatcat_requests_total", route) - metric(before, "hatcat_requests_total", route)
        tokens = metric(after, "hatcat_tokens_generated_total") - metric(before, "hatcat_tokens_generated_total")
        direct = httpx.post(
            f"{hatcat_url}/v1/chat/completions",
            json=chat_body(False),
            headers={"Authorization": f"Bearer {key}"},
            timeout=600,
        )
        direct.raise_for_status()
        direct_text = direct.json()["choices"][0]["message"]["content"]
        report = answer.get("hatcat") or {}
        completion_tokens = (answer.get("usage") or {}).get("completion_tokens")
        checks = {
            # HatCat's own extra field survived the proxy, with a per-token report when monitoring
            "hatcat_report_in_openwebui_answer": "monitoring" in report
            and (bool(report.get("tokens")) or not report["monitoring"]),
            "backend_counted_one_chat": chats == 1,
            "backend_tokens_match_usage": completion_tokens is not None and tokens == completion_tokens,
            "same_text_direct": direct_text == text,
        }
        return {
            "ok": all(checks.values()),
            **checks,
            "monitoring": report.get("monitoring"),
            "probe_pack": report.get("probe_pack"),
            "backend_chat_requests_delta": chats,
            "backend_tokens_delta": tokens,
            "direct_text": direct_text,
            "report_tokens": len(report.get("tokens") or []),
            "report_first_token": (report.get("tokens") or [None])[0],
        }

    def stream() -> dict[str, Any]:
        chunks, divergences, text = 0, 0, ""
        start, first = time.perf_counter(), None
        with httpx.stream(
            "POST",
            f"{webui}/api/chat/completions",
            json=chat_body(True),
            headers={"Authorization": f"Bearer {state['token']}"},
            timeout=600,
        ) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                choices = chunk.get("choices") or []
                if not choices:
                    continue
                delta = choices[0].get("delta") or {}
                chunks += 1
                if (delta.get("metadata") or {}).get("divergence") is not None:
                    divergences += 1
                    first = first or time.perf_counter() - start
                text += delta.get("content") or ""
        return {
            "ok": divergences > 0,
            "chunks": chunks,
            "chunks_with_divergence": divergences,
            "first_divergence_after_s": round(first, 2) if first else None,
            "text": text,
        }

    passed = False
    try:
        run.step("install", install)
        run.step("hatcat", hatcat)
        run.step("start", start)
        run.step("admin", admin)
        run.step("models", models)
        run.step("chat", chat)
        run.step("provenance", provenance)
        run.step("stream", stream)
        ui = UIChat(webui, state["token"])
        run.step("ui_chat_before_install", lambda: ui.turn("Name a famous river.", expect_embed=False))
        run.step("function_installed", lambda: install_functions(webui, admin_password, hatcat_url, key))
        run.step("ui_chat", lambda: ui.turn("Tell me about a frightened driver.", expect_embed=True))
        run.step("action", ui.action_on_first)
        run.step("server_event_line", lambda: server_event_line(webui, state["token"], ui))
        run.step("embed_rendered", lambda: screenshot(webui, state["token"], ui.chat_id, len(ui.assistant_ids)))
        passed = True
    except StepFailed:
        pass
    finally:
        if webui_proc is not None:
            run.info["openwebui_rss_mib_at_end"] = rss_mib(webui_proc.pid)
        stop(webui_proc)
        stop(hatcat_proc)
        logs = {"open-webui": webui_log, "hatcat": hatcat_log}
        run.info["log_tails"] = {
            n: p.read_text(errors="replace")[-1500:].splitlines()[-12:]
            for n, p in logs.items()
            if p.exists() and not passed
        }
        if passed:
            run.info.pop("log_tails")
    result = {"passed": passed, **run.info, "steps": run.steps}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"{'PASSED' if passed else 'FAILED'}; wrote {args.out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
