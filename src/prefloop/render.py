"""Model and user text on a page, shown as the text it is: the one place prefloop turns text into HTML.

Text written by a model or a person may hold HTML (`<img src=x>`, `<script>`) or Markdown images
that point anywhere. On a prefloop page such text must read exactly as written and must never make
the reader's browser fetch anything. So:

- `markdown_html(text)`: Markdown formatting is kept (emphasis, lists, code, tables, links), raw
  HTML is escaped and shown as text, and a Markdown image is shown as its source text instead
  of being loaded. Built on markdown-it-py (CommonMark) with HTML input switched off.
- `escape_markdown(text)`: plain text (a name, an error message) for a component that renders
  Markdown, with every Markdown and HTML character backslash-escaped so it shows literally.
- `html_page(title, body)`: a standalone page (e.g. a report) whose Content-Security-Policy
  forbids every remote resource and every script, so nothing on it can be fetched or run.
- `terminal_text(text)`: the same for a terminal (`prefloop chat`): control characters (ESC
  sequences that move the cursor, rewrite the title or the clipboard, BEL) are shown as `\x1b`.
"""

from __future__ import annotations

import html
import re
from functools import lru_cache

from markdown_it import MarkdownIt

# CommonMark: any ASCII punctuation character may be backslash-escaped to stand for itself.
_MARKDOWN_PUNCTUATION = re.compile(r"([!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~])")

# C0/C1 controls and DEL, except newline and tab: in a terminal they are commands, not text.
_TERMINAL_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

# Nothing remote, nothing that runs: inline styles and data: images (e.g. an embedded plot) only.
PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def _image_as_text(renderer, tokens, idx, options, env) -> str:
    """A Markdown image, written back as its source text (escaped): seen, never loaded."""
    token = tokens[idx]
    alt = "".join(child.content for child in token.children or [])
    title = token.attrGet("title")
    source = f"![{alt}]({token.attrGet('src') or ''}" + (f' "{title}"' if title else "") + ")"
    return html.escape(source)


def _link_open(renderer, tokens, idx, options, env) -> str:
    """Links open in a new tab and tell the target nothing about the page (no referrer, no opener)."""
    tokens[idx].attrSet("rel", "noopener noreferrer nofollow")
    tokens[idx].attrSet("target", "_blank")
    return renderer.renderToken(tokens, idx, options, env)


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "breaks": True, "linkify": False}).enable(["table", "strikethrough"])
    md.disable("entity")  # "&lt;" written by the model reads "&lt;", not "<"
    md.add_render_rule("image", _image_as_text)
    md.add_render_rule("link_open", _link_open)
    return md


def markdown_html(text: str) -> str:
    """HTML of `text` read as Markdown, safe to put in a page: raw HTML shows as text (`<img src=x>`
    reads `<img src=x>`, `&amp;` reads `&amp;`), Markdown images show as their source, `javascript:`
    and other unsafe link targets are not linked (markdown-it's validateLink). Single newlines are kept as line breaks.
    Raises TypeError if `text` is not a string."""
    if not isinstance(text, str):
        raise TypeError(f"markdown_html takes text, got {type(text).__name__}")
    return _parser().render(text)


def escape_markdown(text: str) -> str:
    """`text` for a Markdown component, shown literally: every ASCII punctuation character is
    backslash-escaped (CommonMark 2.4), so `*`, `<img>`, `|` and backticks stay as typed."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", str(text))


def html_page(title: str, body_html: str) -> str:
    """A standalone HTML document around `body_html` (which must come from `markdown_html` or other
    escaped HTML); its Content-Security-Policy (PAGE_POLICY) blocks remote resources and scripts."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{PAGE_POLICY}\">\n"
            f"<title>{html.escape(title)}</title></head>\n<body>\n{body_html}\n</body></html>\n")


def terminal_text(text: str) -> str:
    """`text` safe to write to a terminal: every control character but newline and tab is written
    as its escape (`\x1b[2J` reads as those characters instead of clearing the screen)."""
    return _TERMINAL_CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
