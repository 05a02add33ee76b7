"""The report as data (sections of text, tables and figures) and its two renderings.

``report.md`` links the figures beside it; ``report.html`` is self-contained: every figure is embedded
as a base64 data URI, so the file can be mailed or attached to a ticket and still shows everything.
The HTML goes through a Jinja2 template with autoescaping: prompts and paths are user text.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment

from leafgen import atomic


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    path: Path
    """A PNG in the run directory (the Markdown links it relatively, the HTML embeds it)."""
    caption: str


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def render_markdown(title: str, sections: list[Section], folder: Path) -> str:
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for w in s.warnings:
            lines += [f"> **Warning:** {w}", ""]
        for p in s.paragraphs:
            lines += [p, ""]
        for t in s.tables:
            lines.append("| " + " | ".join(t.header) + " |")
            lines.append("|" + "---|" * len(t.header))
            lines += ["| " + " | ".join(row) + " |" for row in t.rows]
            lines.append("")
        for f in s.figures:
            link = Path(os.path.relpath(f.path, folder)).as_posix()
            lines += [f"![{f.caption}]({link})", "", f"*{f.caption}*", ""]
    return "\n".join(lines)


TEMPLATE = Path(__file__).with_name("report.html.j2")


def _embed(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render_html(title: str, sections: list[Section]) -> str:
    env = Environment(autoescape=True)
    return env.from_string(TEMPLATE.read_text()).render(title=title, sections=sections, embed=_embed)


def write_report(title: str, sections: list[Section], folder: Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``folder``; returns both paths."""
    md, html = folder / "report.md", folder / "report.html"
    atomic.write_text(md, render_markdown(title, sections, folder))
    atomic.write_text(html, render_html(title, sections))
    return md, html
