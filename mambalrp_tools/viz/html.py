"""The token heatmap as HTML: one escaped `<span>` per token, spans separated by spaces so it wraps."""

from __future__ import annotations

import html
from typing import Sequence


def _background(v: float) -> str:
    rgb = "220,40,40" if v >= 0 else "40,90,220"  # red positive, blue negative
    return f"rgba({rgb},{min(abs(v), 1.0):.3f})"


def token_heatmap(tokens: Sequence[str], relevance: Sequence[float], *, label: str = "", note: str = "",
                  marked: Sequence[int] = (), scale: float | None = None, offset: int = 0,
                  total: int | None = None) -> str:
    """A wrapping line of tokens coloured by relevance (scaled by `scale`, default the max |R| shown).

    label is shown in bold, note after it. marked: indices (into `tokens`) to outline, e.g. the evidence. offset/total: when `tokens` is a
    window of a longer input, say which part is shown. Every token is HTML-escaped; the spans are
    joined by a space so that the line breaks and copied text keeps word boundaries.
    """
    values = [float(v) for v in relevance]
    scale = scale or max((abs(v) for v in values), default=0.0) or 1.0
    marked = set(int(i) for i in marked)
    spans = []
    for j, (tok, r) in enumerate(zip(tokens, values)):
        border = "outline:2px solid #e76f51;" if j in marked else ""
        spans.append(f"<span class='mlt-token' title='{html.escape(f'{offset + j}: {r:.4g}', quote=True)}' "
                     f"style='background:{_background(r / scale)};{border}padding:1px 2px;border-radius:3px;"
                     f"white-space:pre'>{html.escape(tok)}</span>")
    head = []
    if label:
        head.append(f"<b>{html.escape(label)}</b>")
    if note:
        head.append(html.escape(note))
    if total is not None and (offset > 0 or offset + len(values) < total):
        head.append(html.escape(f"(tokens {offset}–{offset + len(values) - 1} of {total})"))
    lead = (" ".join(head) + "<br>") if head else ""
    return ("<div class='mlt-heatmap' style='font-family:monospace;line-height:1.9;white-space:normal;"
            f"overflow-wrap:anywhere;max-width:100%'>{lead}{' '.join(spans)}</div>")


def window(n_tokens: int, focus: Sequence[int], width: int) -> tuple[int, int]:
    """[start, stop) of at most `width` positions around `focus` (all of them when it fits), always
    keeping the last position (the one explained) when the focus is near it."""
    if n_tokens <= width:
        return 0, n_tokens
    lo, hi = (min(focus), max(focus) + 1) if len(focus) else (n_tokens - 1, n_tokens)
    pad = max(0, width - (hi - lo)) // 2
    start = max(0, min(lo - pad, n_tokens - width))
    return start, min(n_tokens, start + width)
