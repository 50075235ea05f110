"""A ``Page`` as GitHub-flavoured markdown: tables as pipe tables, PNGs linked by their relative paths
(``figures/``, ``examples/`` beside ``report.md``), text escaped so that a prediction holding ``|``, ``*``
or ``<b>`` stays text."""

from __future__ import annotations

import re

from vlgraft.eval.report.page import Example, Page, Section, Table

# characters that markdown (or the HTML GitHub allows in it) would read as syntax inside text
_SPECIAL = re.compile(r"([\\`*_\[\]<>|&~#])")


def md_escape(text: str) -> str:
    """``text`` as literal markdown on one line (a line break would end a table row)."""
    return _SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def render_table(t: Table) -> str:
    head = "| " + " | ".join(md_escape(c) or " " for c in t.columns) + " |"
    rule = "| " + " | ".join("---:" if n else "---" for n in t.numeric_columns()) + " |"
    rows = ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in t.rows]
    title = [f"**{md_escape(t.title)}**", ""] if t.title else []
    return "\n".join([*title, head, rule, *rows]) + "\n"


def _cell(ex: Example) -> tuple[str, str, str]:
    if ex.image is not None:
        image = f"![example image]({ex.image})"
    else:
        image = md_escape(ex.image_note) if ex.image_note else ""
    mark = {True: "✅ ", False: "❌ ", None: ""}[ex.correct] + md_escape(ex.mark)
    text = "<br>".join(f"**{md_escape(k)}**: {md_escape(v)}" for k, v in ex.fields)
    if ex.tag:
        text += f"<br>*{md_escape(ex.tag)}*"
    return image, mark, text


def render_section(s: Section) -> str:
    parts = [f"## {md_escape(s.title)}\n"]
    parts += [md_escape(n) + "\n" for n in s.notes]
    parts += [render_table(t) for t in s.tables]
    parts += [f"![{md_escape(f.alt)}]({f.asset})\n" for f in s.figures]
    for g in s.groups:
        parts.append(f"### {md_escape(g.heading)}\n")
        if g.examples:
            rows = ["| image | mark | example |", "| --- | --- | --- |"]
            rows += ["| " + " | ".join(_cell(ex)) + " |" for ex in g.examples]
            parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


def render_markdown(page: Page) -> str:
    return f"# {md_escape(page.title)}\n\n" + "\n".join(render_section(s) for s in page.sections)
