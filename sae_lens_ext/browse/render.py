"""The browser's pages: ``index.html`` and ``latents/<latent>.html``.

Every page is self-contained: its CSS, script and data are inline, it loads nothing (no
server, no CDN) and opens from disk. Every token and every text from the data is
HTML-escaped here; plugin panels are inserted as the plugin wrote them.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from sae_lens_ext.browse import svg
from sae_lens_ext.browse.collect import linear_histogram
from sae_lens_ext.browse.data import BrowserData, Context, Panel
from sae_lens_ext.browse.logits import PromotedTokens

#: Marks a folder as written by ``sae-lens browse`` (``--overwrite`` replaces only such).
GENERATOR = "sae-lens browse"
#: Activation of a highlighted token -> its background: white to orange (255, 140, 0).
HIGHLIGHT = (255, 140, 0)
#: Tokens shown per latent in the index (activating and promoted).
INDEX_TOKENS = 6


def asset(name: str) -> str:
    return resources.files("sae_lens_ext.browse").joinpath("assets", name).read_text()


def page(title: str, body: str, script: str, data: dict[str, Any] | None = None) -> str:
    """A whole HTML document with inline style, data (JSON) and script."""
    blocks = "".join(
        f'<script type="application/json" id="{key}">{_json(value)}</script>'
        for key, value in (data or {}).items()
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="generator" content="{GENERATOR}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{asset('browser.css')}</style></head>"
        f"<body>{body}{blocks}<script>{script}</script></body></html>\n"
    )


def _json(value: object) -> str:
    """JSON safe inside a ``<script>`` element."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e")


def display_text(token: str) -> str:
    """A token as shown: newlines and tabs as visible marks, HTML-escaped."""
    return html.escape(token.replace("\n", "\u21b5").replace("\t", "\u21e5"))


def highlight(value: float, scale: float) -> str:
    """Background of a token: white at 0, orange ``HIGHLIGHT`` at ``scale`` and above."""
    a = min(1.0, max(0.0, value / scale)) if scale > 0 else 0.0
    r, g, b = (round(255 + (c - 255) * a) for c in HIGHLIGHT)
    return f"rgb({r},{g},{b})"


def context_html(context: Context, scale: float, special: Sequence[str] = ()) -> str:
    """A context's tokens, each highlighted by the latent's activation on it."""
    spans = []
    for j, (token, value) in enumerate(zip(context.tokens, context.values, strict=True)):
        classes = ["tok"] + (["max"] if j == context.max_index else [])
        classes += ["special"] if token in special else []
        style = f' style="background:{highlight(value, scale)}"' if value > 0 else ""
        tip = html.escape(f"{token!r}: {value:.3g}", quote=True)
        spans.append(
            f'<span class="{" ".join(classes)}"{style} title="{tip}">{display_text(token)}</span>'
        )
    return "".join(spans)


def activating_tokens(contexts: list[Context]) -> list[str]:
    """Tokens at the contexts' maxima, most frequent first."""
    counts = Counter(c.tokens[c.max_index] for c in contexts)
    return [token for token, _ in counts.most_common(INDEX_TOKENS)]


def promoted_list(data: BrowserData, promoted: PromotedTokens | None, row: int) -> list[str]:
    if promoted is None:
        return []
    return [data.token_text(int(t)) for t in promoted.top_ids[row, :INDEX_TOKENS]]


def header(prefix: str, sae_name: str, nav: str = "", controls: str = "") -> str:
    return (
        f'<header class="top"><a class="brand" href="{prefix}index.html">'
        f"{html.escape(sae_name)}</a>{nav}"
        '<form id="jump-latent"><label for="latent-input">Latent</label>'
        '<input id="latent-input" type="number" min="0" placeholder="#">'
        f'<button type="submit">Go</button></form>{controls}<span id="message"></span></header>'
    )


def stats_html(data: BrowserData, latent: int) -> str:
    freq, count = float(data.frequencies[latent]), data.frequencies[latent] * data.n_tokens
    rank = int(data.ranks[latent])
    every = f" (1 in {1 / freq:,.0f})" if freq > 0 else ""
    fired = (
        f"fires on <b>{freq:.3%}</b> of tokens{every}, {round(float(count)):,} of {data.n_tokens:,}"
        if freq > 0
        else f"<b>never fired</b> in {data.n_tokens:,} tokens"
    )
    return (
        f'<div class="stats"><span>rank <b>{rank:,}</b> of {data.d_sae:,} by frequency</span>'
        f"<span>{fired}</span><span>max activation "
        f"<b>{svg.fmt(max(0.0, float(data.max_values[latent])))}</b></span></div>"
    )


def histogram_panel(data: BrowserData, row: int, latent: int) -> str:
    top = max(0.0, float(data.max_values[latent]))
    counts = data.hist_counts[row]
    if top <= 0 or int(counts.sum()) == 0:
        return '<div class="panel"><h2>Activations</h2><p class="note">No positive activation.</p></div>'
    heights, edges = linear_histogram(counts, data.hist_edges, top)
    chart = svg.bar_chart(
        heights, edges, xlabel="activation", ylabel="tokens", title="activation histogram"
    )
    return f'<div class="panel"><h2>Activations ({int(counts.sum()):,} positive)</h2>{chart}</div>'


def logits_panel(
    data: BrowserData, promoted: PromotedTokens | None, row: int, reason: str | None
) -> str:
    if promoted is None:
        note = html.escape(f"Not shown: {reason}." if reason else "Not shown.")
        return f'<div class="panel"><h2>Promoted tokens</h2><p class="note">{note}</p></div>'
    lines = []
    for j in range(promoted.top_ids.shape[1]):
        up, down = int(promoted.top_ids[row, j]), int(promoted.bottom_ids[row, j])
        lines.append(
            f'<tr><td class="pos">{display_text(repr(data.token_text(up)))}</td>'
            f'<td class="pos">+{svg.fmt(float(promoted.top_values[row, j]))}</td>'
            f'<td class="neg">{display_text(repr(data.token_text(down)))}</td>'
            f'<td class="neg">{svg.fmt(float(promoted.bottom_values[row, j]))}</td></tr>'
        )
    return (
        '<div class="panel"><h2>Promoted / suppressed tokens (logit effect)</h2>'
        f'<table class="logits">{"".join(lines)}</table></div>'
    )


def panels_html(panels: Sequence[Panel]) -> str:
    return "".join(
        f'<div class="panel plugin"><h2>{html.escape(p.title)}</h2>{p.html}</div>' for p in panels
    )


def latent_page(
    data: BrowserData,
    row: int,
    promoted: PromotedTokens | None,
    panels: Sequence[Panel],
    reason: str | None,
    sae_name: str,
) -> str:
    latent = data.latents[row]
    contexts = data.top_contexts(latent)
    scale = contexts[0].max_value if contexts else 1.0
    special = [data.token_text(i) for i in data.special_ids]
    items = "".join(
        f'<li><span class="val">{svg.fmt(c.max_value)}</span>'
        f'<span class="ctx">{context_html(c, scale, special)}</span></li>'
        for c in contexts
    )
    listing = (
        f'<ol class="contexts">{items}</ol>' if items else '<p class="note">It never fired.</p>'
    )
    nav = [
        f'<a rel="prev" href="{data.latents[row - 1]}.html">&larr; latent {data.latents[row - 1]}</a>'
        if row > 0
        else "",
        f'<a rel="next" href="{data.latents[row + 1]}.html">latent {data.latents[row + 1]} &rarr;</a>'
        if row + 1 < len(data.latents)
        else "",
    ]
    body = (
        header("../", sae_name, "".join(nav))
        + f'<main><article class="latent-card" id="latent-{latent}"><h1>Latent {latent}</h1>'
        + stats_html(data, latent)
        + '<div class="row">'
        + histogram_panel(data, row, latent)
        + logits_panel(data, promoted, row, reason)
        + panels_html(panels)
        + "</div>"
        + f'<div class="panel wide"><h2>Top contexts ({len(contexts)})</h2>{listing}</div>'
        + "</article></main>"
    )
    return page(
        f"Latent {latent} - {sae_name}", body, asset("latent.js"), {"browsed": data.latents}
    )


def index_row(data: BrowserData, row: int, promoted: PromotedTokens | None) -> str:
    latent = data.latents[row]
    freq, rank = float(data.frequencies[latent]), int(data.ranks[latent])
    top = activating_tokens(data.top_contexts(latent))
    up = promoted_list(data, promoted, row)
    search = "\u0001".join(t.strip().lower() for t in [*top, *up] if t.strip())
    peak = max(0.0, float(data.max_values[latent]))
    width = 0 if freq <= 0 else max(1, round(60 * freq / max(float(data.frequencies.max()), 1e-12)))
    return (
        f'<tr data-latent="{latent}" data-rank="{rank}" data-freq="{freq:.6g}" '
        f'data-max="{peak:.6g}" data-tokens="{html.escape(search, quote=True)}">'
        f'<td><a href="latents/{latent}.html">{latent}</a></td><td class="num">{rank:,}</td>'
        f'<td class="num"><span class="freqbar" style="width:{width}px"></span>{freq:.3%}</td>'
        f'<td class="num">{svg.fmt(peak)}</td>'
        f'<td class="toks">{" ".join(display_text(repr(t)) for t in top)}</td>'
        f'<td class="toks">{" ".join(display_text(repr(t)) for t in up)}</td></tr>'
    )


def index_page(
    data: BrowserData,
    promoted: PromotedTokens | None,
    panels: Sequence[Panel],
    facts: dict[str, str],
    sae_name: str,
) -> str:
    dead = int((data.frequencies == 0).sum())
    read = data.n_contexts * data.context_size
    facts = {
        **facts,
        "tokens read": f"{read:,} in {data.n_contexts:,} contexts",
        "counted": f"{data.n_tokens:,} (BOS, EOS and padding left out)",
    }
    facts["never fired"] = f"{dead:,} of {data.d_sae:,} latents"
    facts["browsed"] = f"{len(data.latents):,} latents"
    stats = "".join(
        f"<span>{html.escape(k)} <b>{html.escape(v)}</b></span>" for k, v in facts.items()
    )
    extra = (
        '<form id="jump-rank"><label for="rank-input">Rank</label>'
        '<input id="rank-input" type="number" min="1" placeholder="#">'
        '<button type="submit">Go</button></form>'
        '<input id="search" type="search" placeholder="Search tokens" aria-label="search tokens">'
    )
    rows = "".join(index_row(data, i, promoted) for i in range(len(data.latents)))
    table = (
        '<table class="index" id="latents"><thead><tr><th data-key="latent">Latent</th>'
        '<th data-key="rank">Rank</th><th data-key="freq">Frequency</th>'
        '<th data-key="max">Max</th><th>Top-activating tokens</th><th>Promoted tokens</th>'
        f"</tr></thead><tbody>{rows}</tbody></table>"
    )
    aside = f"<aside>{panels_html(panels)}</aside>" if panels else ""
    body = (
        header("", sae_name, controls=extra)
        + f'<main><h1>{html.escape(sae_name)}</h1><div class="stats">{stats}</div>'
        + f'<div class="layout"><div class="main">{table}</div>{aside}</div></main>'
    )
    return page(f"{sae_name} - latent browser", body, asset("index.js"))


def write_browser(
    folder: Path,
    data: BrowserData,
    promoted: PromotedTokens | None,
    panels: Sequence[Panel],
    facts: dict[str, str],
    sae_name: str,
    reason: str | None = None,
) -> None:
    """Write ``index.html`` and one page per browsed latent into ``folder``."""
    (folder / "latents").mkdir(parents=True, exist_ok=True)
    by_latent: dict[int | None, list[Panel]] = {}
    for panel in panels:
        by_latent.setdefault(panel.latent, []).append(panel)
    for row, latent in enumerate(data.latents):
        text = latent_page(data, row, promoted, by_latent.get(latent, []), reason, sae_name)
        (folder / "latents" / f"{latent}.html").write_text(text)
    text = index_page(data, promoted, by_latent.get(None, []), facts, sae_name)
    (folder / "index.html").write_text(text)
