"""The compact embed above a HatCat answer in OpenWebUI: the summary line, the top-concepts chart and
only the passages where divergence is coloured past the midpoint of the scale, each with a few tokens
either side, since the answer's full text is right below it. Standard library only: the installer
inlines it, with the renderer, into each function."""

from hatcat.heatmap import embed_document  # inlined by the installer

CONTEXT_TOKENS = 4  # tokens shown either side of a coloured one
GAP = "… "  # starts a passage that does not start the answer


def passages(records: list[dict], cut: float, context: int = CONTEXT_TOKENS) -> list[dict]:
    """The records to show: every token with |max_divergence| >= `cut` (the strongest one when none
    is), with `context` tokens either side; a passage after a gap starts with `GAP`, and a trailing
    gap ends the last one."""
    if not records:
        return []
    hot = [i for i, r in enumerate(records) if abs(r["divergence"]["max_divergence"]) >= cut]
    hot = hot or [max(range(len(records)), key=lambda i: abs(records[i]["divergence"]["max_divergence"]))]
    keep = sorted({j for i in hot for j in range(max(0, i - context), min(len(records), i + context + 1))})
    shown = []
    for n, j in enumerate(keep):
        after_gap = j > (keep[n - 1] + 1 if n else 0)
        shown.append({**records[j], "token": GAP + records[j]["token"]} if after_gap else records[j])
    if keep[-1] < len(records) - 1:
        shown[-1] = {**shown[-1], "token": shown[-1]["token"] + " " + GAP.strip()}
    return shown


def compact_embed(records: list[dict], summary: dict | None, shown: int, full_at: float, passage_at: float) -> str:
    """The embed document; `passage_at`: the share of full colour (`full_at`) a token needs to be shown."""
    return embed_document(passages(records, passage_at * full_at), summary, shown, full_at)
