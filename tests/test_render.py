"""prefloop.render: text reads as written (raw HTML escaped, Markdown images as source), Markdown formatting kept."""

import pytest

from prefloop.render import PAGE_POLICY, escape_markdown, html_page, markdown_html


@pytest.mark.parametrize(
    "text, html",
    [
        ("<img src=x>", "<p>&lt;img src=x&gt;</p>\n"),
        ("<script>alert(1)</script>", "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>\n"),
        ("![cat](http://203.0.113.9/c.png)", "<p>![cat](http://203.0.113.9/c.png)</p>\n"),
        ('![cat](http://h/c.png "t")', "<p>![cat](http://h/c.png &quot;t&quot;)</p>\n"),
        ("![r][ref]\n\n[ref]: http://h/r.png", "<p>![r](http://h/r.png)</p>\n"),
        ("&amp; &lt;b&gt;", "<p>&amp;amp; &amp;lt;b&amp;gt;</p>\n"),
        ("**bold** and `<i>`", "<p><strong>bold</strong> and <code>&lt;i&gt;</code></p>\n"),
        ("```html\n<b>x</b>\n```", '<pre><code class="language-html">&lt;b&gt;x&lt;/b&gt;\n</code></pre>\n'),
        ("one\ntwo", "<p>one<br />\ntwo</p>\n"),
        ("[x](javascript:alert(1))", "<p>[x](javascript:alert(1))</p>\n"),
        ("[docs](https://example.org)",
         '<p><a href="https://example.org" rel="noopener noreferrer nofollow" target="_blank">docs</a></p>\n'),
        ("| a |\n|---|\n| <u>1</u> |",
         "<table>\n<thead>\n<tr>\n<th>a</th>\n</tr>\n</thead>\n<tbody>\n<tr>\n<td>&lt;u&gt;1&lt;/u&gt;</td>\n</tr>\n"
         "</tbody>\n</table>\n"),
    ],
)
def test_markdown_html(text, html):
    assert markdown_html(text) == html


def test_escape_markdown_escapes_every_markdown_and_html_character():
    assert escape_markdown("a*b <img src=x> |c| `d` [e](f)") == \
        r"a\*b \<img src\=x\> \|c\| \`d\` \[e\]\(f\)"
    assert markdown_html(escape_markdown("**<b>x</b>**")) == "<p>**&lt;b&gt;x&lt;/b&gt;**</p>\n"


def test_a_page_forbids_remote_resources_and_scripts():
    page = html_page("<report>", markdown_html("![x](http://h/x.png)"))
    assert f'content="{PAGE_POLICY}"' in page and "default-src 'none'" in PAGE_POLICY
    assert "<title>&lt;report&gt;</title>" in page and "<img" not in page
    with pytest.raises(TypeError):
        markdown_html(None)


def test_terminal_text_shows_control_characters_instead_of_obeying_them():
    from prefloop.render import terminal_text

    assert terminal_text("a\x1b[2Jb\r\x07\x9b\x7f") == r"a\x1b[2Jb\x0d\x07\x9b\x7f"
    assert terminal_text("line one\n\tline two é 中") == "line one\n\tline two é 中"
