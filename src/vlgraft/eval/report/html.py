"""A ``Page`` as one self-contained HTML file: inline CSS, every PNG embedded as a ``data:`` URI, no script
and no external link, so it can be mailed or archived as it is. All text goes through ``html.escape``."""

from __future__ import annotations

import base64
from html import escape

from vlgraft.eval.report.page import Example, Page, Section, Table

GENERATOR = "vlgraft report"  # in <meta name="generator">: how a later run knows the folder is a report

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.3em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.7em; text-align: left; vertical-align: top; }
th.n, td.n { text-align: right; }
th { background: #f4f4f4; }
figure { margin: 0.8em 0; } figure img { max-width: 100%; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 10px; }
.example { border: 2px solid; border-radius: 6px; padding: 8px; font-size: 13px; overflow-wrap: anywhere; }
.example.right { border-color: #2e7d32; background: #f1f8f1; }
.example.neutral { border-color: #78909c; background: #f5f7f8; }
.example.wrong { border-color: #c62828; background: #fdf1f1; }
.mark { font-weight: 700; } .right .mark { color: #2e7d32; } .wrong .mark { color: #c62828; }
.thumb { height: 128px; display: flex; align-items: center; justify-content: center; margin-bottom: 6px; }
.thumb.missing { border: 1px dashed #999; color: #666; font-size: 12px; padding: 4px; text-align: center; }
.tag { color: #666; font-size: 12px; }
dl { margin: 4px 0 0; } dt { font-weight: 600; color: #555; } dd { margin: 0 0 4px 0; white-space: pre-wrap; }
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_table(t: Table) -> str:
    num = t.numeric_columns()

    def cell(tag: str, k: int, text: str) -> str:
        attr = ' class="n"' if k < len(num) and num[k] else ""
        return f"<{tag}{attr}>{escape(text)}</{tag}>"

    head = "".join(cell("th", k, c) for k, c in enumerate(t.columns))
    body = "".join("<tr>" + "".join(cell("td", k, c) for k, c in enumerate(row)) + "</tr>\n" for row in t.rows)
    caption = f"<caption>{escape(t.title)}</caption>" if t.title else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table>\n"


def render_example(ex: Example, page: Page) -> str:
    kind = {True: "right", False: "wrong", None: "neutral"}[ex.correct]
    if ex.image is not None:
        thumb = f'<div class="thumb"><img src="{data_uri(page.assets[ex.image])}" alt="example image"></div>'
    elif ex.image_note:
        thumb = f'<div class="thumb missing">{escape(ex.image_note)}</div>'
    else:
        thumb = ""
    tag = f'<div class="tag">{escape(ex.tag)}</div>' if ex.tag else ""
    fields = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in ex.fields)
    sign = {True: "✓ ", False: "✗ ", None: ""}[ex.correct]
    return (f'<div class="example {kind}">{thumb}<div class="mark">{sign}'
            f'{escape(ex.mark)}</div>{tag}<dl>{fields}</dl></div>\n')


def render_section(s: Section, page: Page) -> str:
    parts = [f"<section>\n<h2>{escape(s.title)}</h2>\n"]
    parts += [f"<p>{escape(n)}</p>\n" for n in s.notes]
    parts += [render_table(t) for t in s.tables]
    parts += [f'<figure><img src="{data_uri(page.assets[f.asset])}" alt="{escape(f.alt)}"></figure>\n'
              for f in s.figures]
    for g in s.groups:
        parts.append(f"<h3>{escape(g.heading)}</h3>\n")
        if g.examples:
            parts.append('<div class="grid">\n' + "".join(render_example(ex, page) for ex in g.examples) + "</div>\n")
    parts.append("</section>\n")
    return "".join(parts)


def render_html(page: Page) -> str:
    body = "".join(render_section(s, page) for s in page.sections)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="generator" content="{GENERATOR}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(page.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<h1>{escape(page.title)}</h1>\n{body}</body>\n</html>\n")
