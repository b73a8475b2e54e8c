"""A tiny document model rendered twice: Markdown (images linked) and self-contained HTML
(images embedded as base64 data URIs, so the file opens anywhere on its own)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str
    emphasis: bool = False  # a warning the reader must not miss


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Image:
    title: str
    path: str  # relative to the report's directory


Block = Heading | Paragraph | Table | Bullets | Image


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append("#" * block.level + " " + block.text)
        elif isinstance(block, Paragraph):
            out.append(f"**{block.text}**" if block.emphasis else block.text)
        elif isinstance(block, Table):
            lines = ["| " + " | ".join(_md_cell(h) for h in block.headers) + " |",
                     "|" + "---|" * len(block.headers)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            out.append("\n".join(lines))
        elif isinstance(block, Bullets):
            out.append("\n".join(f"- {item}" for item in block.items))
        else:
            out.append(f"![{block.title}]({block.path})")
    return "\n\n".join(out) + "\n"


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
.warning { background: #fff3cd; border: 1px solid #e0b000; padding: 0.6em; font-weight: bold; }
figure { margin: 1em 0; } img { max-width: 100%; border: 1px solid #eee; }
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_block(block: Block, base: Path) -> str:
    e = html.escape
    if isinstance(block, Heading):
        return f"<h{block.level}>{e(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        css = ' class="warning"' if block.emphasis else ""
        return f"<p{css}>{e(block.text)}</p>"
    if isinstance(block, Table):
        head = "".join(f"<th>{e(h)}</th>" for h in block.headers)
        body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
                       for row in block.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{e(i)}</li>" for i in block.items) + "</ul>"
    return (f'<figure><img alt="{e(block.title)}" src="{_data_uri(base / block.path)}">'
            f"<figcaption>{e(block.title)}</figcaption></figure>")


def to_html(blocks: list[Block], title: str, base: Path) -> str:
    """A standalone page; image paths are read relative to ``base`` and embedded."""
    body = "\n".join(_html_block(b, base) for b in blocks)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")
