"""The OpenWebUI functions exactly as the installer installs them, fed with real SSE chunks from
`python app.py` (small probe pack) on loopback; the opt-in server-side event line; the embed in
headless Chromium (screenshot in results/screenshots/openwebui_embed.png)."""

from __future__ import annotations

import asyncio
import html
import json
import shutil
import subprocess
import sys
import types
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from hatcat.api.openwebui_events import HEADER
from hatcat.openwebui.bundle import FUNCTIONS, REWRITTEN_BY_OPENWEBUI, function_source
from hatcat.openwebui.passages import GAP, compact_embed, passages
from hatcat.paths import RESULTS

SHOTS = RESULTS / "screenshots"
CHROMIUM = "/usr/bin/chromium"
PROMPTS = ("Tell me about a frightened driver.", "Write about loud music at night.")


def load(function_id: str) -> types.ModuleType:
    """The installed source run as OpenWebUI runs it: exec'd into a fresh module."""
    module = types.ModuleType(f"function_{function_id}")
    exec(function_source(function_id), module.__dict__)  # noqa: S102 - this is how OpenWebUI loads a function
    return module


def record(server: str, prompt: str, max_tokens: int = 10, headers: dict | None = None, **extra) -> list[dict]:
    """The parsed `data:` lines of one real streamed chat completion ([DONE] left out)."""
    body = {
        "model": "hatcat-divergence",
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0,
        **extra,
    }
    chunks = []
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, headers=headers, timeout=300) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:") and line.strip() != "data: [DONE]":
                chunks.append(json.loads(line[5:]))
    return chunks


def token_chunks(chunks: list[dict]) -> list[dict]:
    return [c for c in chunks if c["choices"] and "token_index" in c["choices"][0]["delta"]["metadata"]]


def run_filter(filt, streams: dict[str, list[dict]]) -> tuple[list[dict], list[tuple[str, dict]]]:
    """Feed the streams to `Filter.stream`, interleaved chunk by chunk; returns what it passed on and emitted."""
    passed, emitted = [], []

    async def go() -> None:
        longest = max(len(s) for s in streams.values())
        for i in range(longest):
            for message_id, chunks in streams.items():
                if i < len(chunks):

                    async def emit(event: dict, message_id: str = message_id) -> None:
                        emitted.append((message_id, event))

                    passed.append(await filt.stream(event=chunks[i], __event_emitter__=emit, __message_id__=message_id))

    asyncio.run(go())
    return passed, emitted


class Spans(HTMLParser):
    """The token spans of an embed: (text, background colour, title, token index)."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[list[str]] = []
        self._open = False

    def handle_starttag(self, tag, attrs) -> None:
        a = dict(attrs)
        if tag == "span" and "hc-tok" in (a.get("class") or ""):
            self.spans.append(["", a["style"].removeprefix("background:"), a["title"], int(a["data-index"])])
            self._open = True

    def handle_endtag(self, tag) -> None:
        if tag == "span":
            self._open = False

    def handle_data(self, data) -> None:
        if self._open:
            self.spans[-1][0] += data


def spans_of(document: str) -> list[list]:
    parser = Spans()
    parser.feed(document)
    return parser.spans


def shown(reports: list[dict]) -> list[dict]:
    """The tokens the compact embed shows (default valves) of an answer's per-token reports
    (`TokenRecord.to_dict()` shapes): the passages coloured past the midpoint, with context."""
    return passages(reports, 0.5)


def reports_of(chunks: list[dict]) -> list[dict]:
    """Per-token reports from a stream's token chunks."""
    return [
        {
            "index": c["choices"][0]["delta"]["metadata"]["token_index"],
            "token": c["choices"][0]["delta"]["content"],
            "divergence": c["choices"][0]["delta"]["metadata"]["divergence"],
            "color": c["choices"][0]["delta"]["metadata"]["color"],
            "meta": c["choices"][0]["delta"]["metadata"],
        }
        for c in token_chunks(chunks)
    ]


@pytest.fixture(scope="module")
def streams(server: str) -> dict[str, list[dict]]:
    return {f"message-{i}": record(server, prompt) for i, prompt in enumerate(PROMPTS)}


def test_installed_source_is_self_contained_and_survives_openwebuis_rewrites(tmp_path: Path) -> None:
    for fn in FUNCTIONS:
        source = function_source(fn.id)
        assert source.splitlines()[0] == '"""' and f"title: {fn.name}" in source.split('"""')[1]
        assert "requirements:" not in source.split('"""')[1]  # OpenWebUI would pip-install those
        assert not [p for p in REWRITTEN_BY_OPENWEBUI if p in source]
        assert "import hatcat" not in source and "from hatcat" not in source
        path = tmp_path / f"{fn.id}.py"
        path.write_text(source)
        # isolated interpreter, cwd outside the checkout: `hatcat` cannot be imported there
        check = (
            "import sys, types; m = types.ModuleType('f'); exec(open(sys.argv[1]).read(), m.__dict__); "
            "assert not any(k.startswith('hatcat') for k in sys.modules); "
            "cls = getattr(m, 'Filter', None) or getattr(m, 'Action'); print(type(cls()).__name__)"
        )
        out = subprocess.run(
            [sys.executable, "-I", "-c", check, str(path)], cwd=tmp_path, capture_output=True, text=True, check=False
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() in ("Filter", "Action")


def test_the_compact_embed_shows_the_coloured_passages_with_context_not_the_whole_answer() -> None:
    divergences = [0.0] * 24
    divergences[5], divergences[16] = 0.9, -0.6
    records = [
        {"index": i, "token": f"t{i}", "color": "#fff", "divergence": {"max_divergence": d, "top_divergences": []}}
        for i, d in enumerate(divergences)
    ]
    tokens = [r["token"] for r in passages(records, 0.5, context=2)]
    assert tokens == ["… t3", "t4", "t5", "t6", "t7", "… t14", "t15", "t16", "t17", "t18 …"]
    quiet = [{**r, "divergence": {"max_divergence": 0.1 if r["index"] == 2 else 0.0}} for r in records]
    assert [r["index"] for r in passages(quiet, 0.5, context=1)] == [1, 2, 3]  # none past the cut: the strongest
    assert passages(records[:3], 0.5) == records[:3] and passages([], 0.5) == []
    document = compact_embed(records, None, 8, 1.0, 0.5)
    assert [s[3] for s in spans_of(document)] == [*range(1, 10), *range(12, 21)]  # context 4 either side


def test_filter_turns_a_real_stream_into_one_compact_embed_of_its_coloured_passages(
    streams: dict[str, list[dict]],
) -> None:
    filt = load("hatcat_divergence").Filter()
    chunks = streams["message-0"]
    passed, emitted = run_filter(filt, {"m": chunks})
    assert passed == chunks  # every chunk passes on unchanged
    embeds = [e for _, e in emitted if e["type"] == "embeds"]
    assert len(embeds) == 1 and embeds[0]["data"]["replace"] is True
    (document,) = embeds[0]["data"]["embeds"]
    reports = {r["index"]: r for r in reports_of(chunks)}
    spans = spans_of(document)
    assert len(reports) >= 5 and [s[0] for s in spans] == [r["token"] for r in shown(list(reports.values()))]
    for text, colour, title, index in spans:
        meta = reports[index]["meta"]
        assert text.removeprefix(GAP).removesuffix(" " + GAP.strip()) == reports[index]["token"]
        assert colour == meta["color"]  # the default scale draws the server's colours
        top = meta["divergence"]["top_divergences"]
        assert top and top[0]["concept"] in title and f"{meta['divergence']['max_divergence']:+.2f}" in title
    summary = next(
        c["choices"][0]["delta"]["metadata"]["analysis"]
        for c in chunks
        if c["choices"] and c["choices"][0]["delta"]["metadata"].get("analysis")
    )
    for concept in summary["top_concepts"][: filt.valves.top_concepts]:
        assert f'<span class="hc-concept">{html.escape(concept["concept"])}</span>' in document
    assert f"mean divergence {summary['mean_divergence']:+.3f}" in document
    assert "iframe:height" in document
    assert filt.messages == {}  # the finished message's state is gone


def test_filter_status_lines_are_throttled_and_the_last_is_done(streams: dict[str, list[dict]]) -> None:
    filt = load("hatcat_divergence").Filter()
    filt.valves = filt.Valves(status_every_s=3600)
    _, emitted = run_filter(filt, {"m": streams["message-0"]})
    statuses = [e["data"] for _, e in emitted if e["type"] == "status"]
    assert [s["done"] for s in statuses] == [False, True]  # the first token's line, then the final one
    tokens = [c["choices"][0]["delta"]["metadata"]["divergence"] for c in token_chunks(streams["message-0"])]
    peak = max(tokens, key=lambda d: d["max_divergence"])
    assert statuses[-1]["description"] == (
        f"max divergence {peak['max_divergence']:.2f} · {peak['top_divergences'][0]['concept']}"
    )


def test_filter_keeps_interleaved_messages_apart(streams: dict[str, list[dict]]) -> None:
    filt = load("hatcat_divergence").Filter()
    _, emitted = run_filter(filt, streams)
    for message_id, chunks in streams.items():
        (document,) = [e["data"]["embeds"][0] for m, e in emitted if m == message_id and e["type"] == "embeds"]
        assert [s[0] for s in spans_of(document)] == [r["token"] for r in shown(reports_of(chunks))]


def test_filter_passes_other_models_chunks_untouched_and_emits_nothing() -> None:
    filt = load("hatcat_divergence").Filter()
    plain = [
        {"id": "x", "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]},
        {"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    passed, emitted = run_filter(filt, {"m": plain})
    assert passed == plain and emitted == []


def test_filter_colour_scale_valve_sets_the_divergence_at_full_colour(streams: dict[str, list[dict]]) -> None:
    tokens = [c["choices"][0]["delta"]["metadata"] for c in token_chunks(streams["message-0"])]
    strongest = max(range(len(tokens)), key=lambda i: abs(tokens[i]["divergence"]["max_divergence"]))
    value = tokens[strongest]["divergence"]["max_divergence"]
    assert 0 < abs(value) < 1  # drawn in a paler shade on the default scale
    filt = load("hatcat_divergence").Filter()
    filt.valves = filt.Valves(full_colour_at=abs(value) / 2)
    _, emitted = run_filter(filt, {"m": streams["message-0"]})
    document = next(e["data"]["embeds"][0] for _, e in emitted if e["type"] == "embeds")
    full = "#ff0000" if value > 0 else "#0000ff"
    colour_of = {index: colour for _, colour, _, index in spans_of(document)}
    assert tokens[strongest]["color"] != full and colour_of[tokens[strongest]["token_index"]] == full


def test_action_rescores_a_past_message_through_analyze(server: str, streams: dict[str, list[dict]]) -> None:
    action = load("hatcat_analyze").Action()
    action.valves = action.Valves(hatcat_url=server)
    chunks = streams["message-1"]
    answer = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert "**Analysis**:" in answer
    body = {
        "id": "a-old",
        "messages": [
            {"id": "u-old", "role": "user", "content": PROMPTS[1]},
            {"id": "a-old", "role": "assistant", "content": answer},
            {"id": "u-new", "role": "user", "content": "and then?"},
            {"id": "a-new", "role": "assistant", "content": "Something else entirely."},
        ],
    }
    statuses: list[dict] = []

    async def emit(event: dict) -> None:
        statuses.append(event["data"])

    response = asyncio.run(action.action(body=body, __event_emitter__=emit))
    assert response.headers["content-disposition"] == "inline"
    document = response.body.decode()
    direct = httpx.post(f"{server}/v1/analyze", json={"text": answer.split("\n\n**Analysis**:")[0]}, timeout=120).json()
    reports = direct["tokens"]
    assert [s[0] for s in spans_of(document)] == [t["token"] for t in shown(reports)]
    assert [s[1] for s in spans_of(document)] == [t["color"] for t in shown(reports)]
    assert statuses[-1] == {"description": direct["summary_line"], "done": True}


def test_action_says_why_it_cannot_analyse(server: str) -> None:
    action = load("hatcat_analyze").Action()
    action.valves = action.Valves(hatcat_url=server)
    with pytest.raises(ValueError, match="no text"):
        asyncio.run(action.action(body={"id": "a", "messages": [{"id": "a", "role": "assistant", "content": " "}]}))
    long_text = {"id": "a", "messages": [{"id": "a", "role": "assistant", "content": "word " * 5_000}]}
    with pytest.raises(RuntimeError, match=r"/v1/analyze answered 4\d\d"):
        asyncio.run(action.action(body=long_text))


def test_server_sends_openwebui_event_lines_only_when_asked(server: str) -> None:
    # OpenWebUI 0.12 sends its built-in tools with every chat that has a session: accepted, ignored
    tools = [{"type": "function", "function": {"name": "search_web", "parameters": {"type": "object"}}}]
    asked = record(server, PROMPTS[0], max_tokens=6, headers={HEADER: "1"}, tools=tools, tool_choice="auto")
    plain = record(server, PROMPTS[0], max_tokens=6)
    assert all(c.get("choices") for c in plain) and not any("event" in c for c in plain)
    events = [c["event"] for c in asked if "event" in c]
    assert all(c["choices"] == [] for c in asked if "event" in c)
    assert [e["type"] for e in events] == ["status", "embeds"] and events[0]["data"]["done"] is True
    spans = spans_of(events[1]["data"]["embeds"][0])
    tokens = token_chunks(asked)
    assert [s[0] for s in spans] == [r["token"] for r in shown(reports_of(asked))]
    assert [s[1] for s in spans] == [r["color"] for r in shown(reports_of(asked))]
    assert token_chunks(plain) and [c["choices"][0]["delta"]["content"] for c in token_chunks(plain)] == [
        c["choices"][0]["delta"]["content"] for c in tokens
    ]


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian chromium is not installed (.ci/run installs it)")
def test_embed_renders_in_a_sandboxed_iframe_in_chromium(streams: dict[str, list[dict]]) -> None:
    from playwright.sync_api import sync_playwright

    filt = load("hatcat_divergence").Filter()
    _, emitted = run_filter(filt, {"m": streams["message-0"]})
    document = next(e["data"]["embeds"][0] for _, e in emitted if e["type"] == "embeds")
    # as OpenWebUI shows an embed: srcdoc, scripts allowed, no same-origin, 150 px until the page posts its height
    host = (
        "<!DOCTYPE html><html><body style='margin:0;font-family:sans-serif;background:#f4f4f5'>"
        "<p style='margin:8px'>assistant message (embed above it)</p>"
        "<iframe id='embed' sandbox='allow-scripts' style='width:760px;height:150px;border:1px solid #ddd'></iframe>"
        "<script>window.heights = []; addEventListener('message', e => { if (e.data && e.data.type === 'iframe:height') "
        "{ window.heights.push(e.data.height); document.getElementById('embed').style.height = e.data.height + 'px'; } });"
        "</script></body></html>"
    )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 800, "height": 600})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.set_content(host)
        page.evaluate("d => { document.getElementById('embed').srcdoc = d; }", document)
        page.wait_for_function("window.heights.length > 0", timeout=30_000)
        frame = page.frame_locator("#embed")
        spans = frame.locator(".hc-tok")
        assert spans.count() == len(shown(reports_of(streams["message-0"])))
        colours = [spans.nth(i).evaluate("e => getComputedStyle(e).backgroundColor") for i in range(spans.count())]
        assert all(c not in ("", "rgba(0, 0, 0, 0)") for c in colours)
        assert frame.locator(".hc-bar").count() >= 1
        page.wait_for_timeout(2000)  # the embed re-sends its height for a while: the content's, so always the same
        heights = page.evaluate("window.heights")
        assert len(heights) > 1 and len(set(heights)) == 1 and heights[0] > 100
        assert page.locator("#embed").evaluate("e => e.clientHeight") == heights[0]
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "openwebui_embed.png"), full_page=True)
        browser.close()
    assert errors == []
