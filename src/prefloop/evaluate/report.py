"""Reports people read: `report.md` and a self-contained `report.html` from sections of text, tables and figures.

Generic for every `prefloop eval` command (win rate, leaderboard, prefs, bench):

    report = Report("Win rate: after vs before", subtitle="...")
    section = report.section("Summary", "one paragraph of text")
    section.table(["metric", "value"], [["win rate", "61.2%"], ...])
    section.figure("winrate", fig)          # a matplotlib Figure
    report.write(out_dir)                   # -> report.md, report.html, figures/NAME.png

The HTML opens offline: no scripts, no remote resources, figures embedded as base64 PNG, every piece of
text (model answers included) escaped, so an answer holding `<script>` shows as text. report.md shows
the same tables and links the PNG files written next to it.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1b1b1b;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
.sub{color:#555;margin-top:0}table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}pre{white-space:pre-wrap;margin:0;font-family:inherit}
.warn{background:#fff4d6;border-left:4px solid #e0a800;padding:.5em .8em}img{max-width:100%}
details{margin:.3em 0}summary{cursor:pointer}
"""


@dataclass
class Table:
    """A table: column names and rows of cells (str, int, float or None); floats shown with `digits`."""

    columns: list[str]
    rows: list[list]
    digits: int = 3
    caption: str | None = None

    def cell(self, value) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:.{self.digits}f}"
        return str(value)


@dataclass
class Figure:
    """A matplotlib figure rendered once to PNG bytes."""

    name: str
    png: bytes
    caption: str | None = None

    @classmethod
    def from_matplotlib(cls, name: str, fig, caption: str | None = None) -> "Figure":
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return cls(name, buf.getvalue(), caption)


@dataclass
class Section:
    title: str
    text: str | None = None
    items: list = field(default_factory=list)  # Table | Figure | ("warning", str) | ("details", summary, text)

    def table(self, columns: list[str], rows: list[list], digits: int = 3, caption: str | None = None) -> Table:
        t = Table(columns, rows, digits, caption)
        self.items.append(t)
        return t

    def figure(self, name: str, fig, caption: str | None = None) -> Figure:
        f = Figure.from_matplotlib(name, fig, caption)
        self.items.append(f)
        return f

    def warning(self, text: str) -> None:
        self.items.append(("warning", text))

    def details(self, summary: str, text: str) -> None:
        """A collapsed block of verbatim text (e.g. a model's answer); escaped in HTML, fenced in Markdown."""
        self.items.append(("details", summary, text))


@dataclass
class Report:
    title: str
    subtitle: str | None = None
    sections: list[Section] = field(default_factory=list)

    def section(self, title: str, text: str | None = None) -> Section:
        s = Section(title, text)
        self.sections.append(s)
        return s

    # ------------------------------------------------------------------------------------------ markdown

    def to_markdown(self, figure_dir: str = "figures") -> str:
        lines = [f"# {self.title}", ""]
        if self.subtitle:
            lines += [self.subtitle, ""]
        for s in self.sections:
            lines += [f"## {s.title}", ""]
            if s.text:
                lines += [s.text, ""]
            for item in s.items:
                if isinstance(item, Table):
                    if item.caption:
                        lines += [item.caption, ""]
                    lines.append("| " + " | ".join(_md_cell(c) for c in item.columns) + " |")
                    lines.append("|" + "---|" * len(item.columns))
                    lines += ["| " + " | ".join(_md_cell(item.cell(v)) for v in row) + " |" for row in item.rows]
                    lines.append("")
                elif isinstance(item, Figure):
                    lines += [f"![{item.caption or item.name}]({figure_dir}/{item.name}.png)", ""]
                elif item[0] == "warning":
                    lines += [f"> **Warning:** {item[1]}", ""]
                else:
                    fence = "````" if "```" in item[2] else "```"
                    lines += [f"**{item[1]}**", "", fence + "text", item[2], fence, ""]
        return "\n".join(lines).rstrip() + "\n"

    # ------------------------------------------------------------------------------------------ html

    def to_html(self) -> str:
        e = html.escape
        parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                 f"<title>{e(self.title)}</title><style>{CSS}</style></head><body>", f"<h1>{e(self.title)}</h1>"]
        if self.subtitle:
            parts.append(f'<p class="sub">{e(self.subtitle)}</p>')
        for s in self.sections:
            parts.append(f"<h2>{e(s.title)}</h2>")
            if s.text:
                parts += [f"<p>{e(p)}</p>" for p in s.text.split("\n\n")]
            for item in s.items:
                if isinstance(item, Table):
                    parts.append("<table>")
                    if item.caption:
                        parts.append(f"<caption>{e(item.caption)}</caption>")
                    parts.append("<tr>" + "".join(f"<th>{e(c)}</th>" for c in item.columns) + "</tr>")
                    for row in item.rows:
                        cells = []
                        for v in row:
                            cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
                            cells.append(f"<td{cls}><pre>{e(item.cell(v))}</pre></td>")
                        parts.append("<tr>" + "".join(cells) + "</tr>")
                    parts.append("</table>")
                elif isinstance(item, Figure):
                    data = base64.b64encode(item.png).decode("ascii")
                    parts.append(f'<figure><img alt="{e(item.caption or item.name)}" '
                                 f'src="data:image/png;base64,{data}">'
                                 + (f"<figcaption>{e(item.caption)}</figcaption>" if item.caption else "")
                                 + "</figure>")
                elif item[0] == "warning":
                    parts.append(f'<p class="warn">{e(item[1])}</p>')
                else:
                    parts.append(f"<details><summary>{e(item[1])}</summary><pre>{e(item[2])}</pre></details>")
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write report.md, report.html and figures/NAME.png into `out_dir` (each atomically); returns their
        paths."""
        from prefloop.output_files import write_atomically

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        figures = [i for s in self.sections for i in s.items if isinstance(i, Figure)]
        if figures:
            (out / "figures").mkdir(exist_ok=True)
            for f in figures:
                write_atomically(out / "figures" / f"{f.name}.png", f.png)
        md, page = out / "report.md", out / "report.html"
        write_atomically(md, self.to_markdown())
        write_atomically(page, self.to_html())
        return {"markdown": md, "html": page}


def _md_cell(text: str) -> str:
    """A Markdown table cell: pipes escaped, newlines as <br> (so a multi-line answer stays in its cell)."""
    return str(text).replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def percent(value: float | None, digits: int = 1) -> str:
    """0.612 -> '61.2%'; None -> 'n/a'."""
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def endpoint_adaptation_notes(results: dict) -> list[str]:
    """One sentence per endpoint (the judge, each model) that refused request fields, from the
    `endpoint_adaptations` of a results object: what was sent instead and, when the temperature was
    left out, that the endpoint sampled at its own default rather than the temperature configured."""
    from prefloop.chat_clients import describe_adaptations

    entries = [("judge", results.get("judge"))]
    entries += [("model" if role == "model" else f"model {role!r}", entry)
                for role, entry in (results.get("models") or {}).items()]
    notes = []
    for who, entry in entries:
        adaptations = entry.get("endpoint_adaptations") if isinstance(entry, dict) else None
        if not adaptations:
            continue
        name = entry.get("name") or entry.get("url") or entry.get("target")
        note = (f"The {who} endpoint{f' ({name})' if name else ''} refused request fields and was asked as it asks: "
                f"{describe_adaptations(adaptations)}.")
        if adaptations.get("temperature") == "left out":
            note += (" So no temperature was sent: it sampled at the endpoint's default (1 for OpenAI's reasoning "
                     + ("models), not greedily (temperature 0) as configured: its verdicts are samples."
                        if who == "judge" else "models), not at the configured temperature."))
        notes.append(note)
    return notes
