"""End to end in headless Debian Chromium: log in, vote by click and by key, undo, vote again; check the DB
and the exported JSONL; keep a screenshot in test-artifacts/."""

import json
import os
import socket
from pathlib import Path

import pytest

from prefloop.label.app import launch, prepare_session
from prefloop.label.export import export_command
from prefloop.store import Store

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_candidates(path: Path) -> None:
    rows = [
        {"conversations": [{"from": "human", "value": "Name a prime."}, {"from": "gpt", "value": "Seven."},
                           {"from": "human", "value": f"Show it in code, take {i}."}],
         "candidates": [{"text": f"Answer one-{i}:\n\n```python\nprint({i})\n```", "model": "model-x"},
                        {"text": f"Answer two-{i}: **bold** and `inline`", "model": "model-y"}]}
        for i in range(3)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def launch_chromium(playwright):
    """Debian's Chromium, headless, with nothing of its own going out to the network."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"])


def shown(page) -> tuple[str, str]:
    return page.inner_text("#response-a"), page.inner_text("#response-b")


def test_vote_click_key_undo_export(tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    from playwright.sync_api import expect, sync_playwright

    write_candidates(tmp_path / "cands.jsonl")
    db = tmp_path / "label.sqlite"
    session = prepare_session(pairs=str(tmp_path / "cands.jsonl"), db=str(db), dimensions="helpfulness",
                              overlap=1, seed=3)
    port = free_port()
    demo = launch(session, host="127.0.0.1", port=port, users=[("alice", "secret-1")])
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            outside = []  # no request may leave this machine (fonts, analytics, CDNs)
            page.on("request", lambda r: None if r.url.startswith(
                (f"http://127.0.0.1:{port}/", f"ws://127.0.0.1:{port}/", "data:", "blob:")) else outside.append(r.url))
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_label("username").fill("alice")
            page.get_by_label("password").fill("secret-1")
            page.get_by_role("button", name="Login").click()

            expect(page.locator("#progress")).to_contain_text("alice: 0 judged", timeout=30_000)
            expect(page.locator("#shortcut-help")).to_contain_text("1")
            expect(page.locator("#conversation")).to_contain_text("Name a prime.")  # the whole conversation
            expect(page.locator("#conversation")).to_contain_text("Seven.")
            # markdown and code are rendered, not shown as source
            assert page.locator("#response-a code, #response-b code").count() >= 1
            assert "```" not in "".join(shown(page))
            first_left, _ = shown(page)

            # 1) vote by click, with a rating and a reason
            page.locator("#rate-helpfulness-a").get_by_text("5", exact=True).click()
            page.locator("#reason textarea").fill("clearer answer")
            page.locator("#vote-a").click()
            expect(page.locator("#reveal")).to_contain_text("Saved vote #1", timeout=20_000)
            expect(page.locator("#reveal")).to_contain_text("model-")  # identities revealed after the vote
            expect(page.locator("#progress")).to_contain_text("alice: 1 judged")
            second_left, second_right = shown(page)
            assert second_left != first_left

            # 2) vote by keyboard shortcut "2" (B is better)
            page.locator("h2").first.click()
            page.keyboard.press("2")
            expect(page.locator("#reveal")).to_contain_text("Saved vote #2", timeout=20_000)
            expect(page.locator("#progress")).to_contain_text("alice: 2 judged")

            # 3) undo: the same item comes back, same sides
            page.locator("#undo").click()
            expect(page.locator("#status")).to_contain_text("undone", timeout=20_000)
            expect(page.locator("#progress")).to_contain_text("alice: 1 judged")
            assert shown(page) == (second_left, second_right)

            # 4) vote again on it with the key for "Tie"
            page.locator("h2").first.click()
            page.keyboard.press("3")
            expect(page.locator("#reveal")).to_contain_text("Saved vote #3", timeout=20_000)
            page.locator("#reveal").scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "label-browser.png"), full_page=True)
            browser.close()
        assert outside == []
    finally:
        demo.close()

    with Store(db) as store:
        votes = store.votes()
    assert [(v["vote_id"], v["annotator"], v["retracted"]) for v in votes] == [
        (1, "alice", False), (2, "alice", True), (3, "alice", False)]
    first, undone, again = votes
    assert undone["item_id"] == again["item_id"] != first["item_id"]
    assert again["verdict"] == "tie"
    # verdicts are stored relative to the stored a/b: "A" (left) maps through the shown order
    left_is_stored = "a" if first["shown_order"] == "ab" else "b"
    assert first["verdict"] == left_is_stored
    assert first["ratings"] == {"helpfulness": {left_is_stored: 5}}
    assert first["reason"] == "clearer answer"
    assert undone["verdict"] == ("b" if undone["shown_order"] == "ab" else "a")
    assert first_left.split(":")[0] in first[f"response_{left_is_stored}"]

    out = tmp_path / "prefs.jsonl"
    assert export_command(str(db), str(out), 0.0, False) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 1  # the tie is left out by default
    record = records[0]
    assert record["chosen"] == first[f"response_{left_is_stored}"]
    assert record["annotators"] == ["alice"]
    assert record["dimensions"] == {"helpfulness": {"chosen": 5}}
    assert [t["from"] for t in record["conversations"]] == ["user", "assistant", "user"]
    assert (ARTIFACTS / "label-browser.png").stat().st_size > 10_000


def test_live_mode_without_login(tmp_path, tiny_model_dir):
    """No --auth: the annotator types a name; draws a multi-turn prompt, both local models answer, vote."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    from playwright.sync_api import expect, sync_playwright

    from prefloop.sampling import SamplingParams

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi there"},
                                                {"role": "assistant", "content": "Hello!"},
                                                {"role": "user", "content": "Tell me a joke"}]}) + "\n")
    session = prepare_session(model_a=str(tiny_model_dir), model_b=str(tiny_model_dir), prompts=str(prompts),
                              db=str(tmp_path / "live.sqlite"))
    for responder in session.responders:
        responder.params = SamplingParams(max_new_tokens=12, temperature=0.7)
    port = free_port()
    demo = launch(session, port=port)
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#annotator-name textarea, #annotator-name input").fill("dana")
            page.locator("#annotator-name textarea, #annotator-name input").press("Enter")
            expect(page.locator("#progress")).to_contain_text("dana: 0 judged", timeout=30_000)
            expect(page.locator("#response-a")).to_contain_text("All done")
            page.get_by_role("button", name="Draw a prompt").click()
            expect(page.locator("#live-prompt textarea")).to_have_value("Tell me a joke", timeout=20_000)
            page.locator("#generate").click()
            expect(page.locator("#status")).to_contain_text("Both models answered", timeout=60_000)
            expect(page.locator("#conversation")).to_contain_text("Hello!")  # the whole drawn conversation
            page.locator("#vote-b").click()
            expect(page.locator("#reveal")).to_contain_text(tiny_model_dir.name, timeout=20_000)  # identities shown
            page.get_by_text("Statistics", exact=True).click()  # open the accordion
            page.locator("#refresh-stats").click()
            expect(page.locator("#stats")).to_contain_text("votes: 1 on 1 items", timeout=20_000)
            page.screenshot(path=str(ARTIFACTS / "label-browser-live.png"), full_page=True)
            browser.close()
    finally:
        demo.close()
    with Store(tmp_path / "live.sqlite") as store:
        [vote] = store.active_votes()
    assert vote["annotator"] == "dana" and vote["source_a"] == f"{tiny_model_dir.name} (--model-a)"
    assert [m["content"] for m in vote["prompt"]] == ["Hi there", "Hello!", "Tell me a joke"]
    assert vote["verdict"] == ("b" if vote["shown_order"] == "ab" else "a")


HOSTILE = {
    "system": "Answer <b>briefly</b>. <img src=http://203.0.113.9/system.png>",
    "prompt": "Is <img src=x> an <b>image</b>? See ![logo](http://203.0.113.9/logo.png) & &lt;ok&gt;",
    "a": "It is <img src=x> text. <script>window.pwned = 1</script>\n\n![cat](http://203.0.113.9/cat.png)",
    "b": "**Bold stays** and `<code>` stays code; <iframe src=http://203.0.113.9/f></iframe>",
}


def test_model_and_user_text_is_shown_as_text_and_nothing_is_fetched(tmp_path):
    """Issue 12 item 8: a response with <img src=x> showed a broken image; an image URL in model text made the
    annotator's browser fetch it. Every text on the page reads as written and no request leaves the page."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    from playwright.sync_api import expect, sync_playwright

    cands = tmp_path / "cands.jsonl"
    cands.write_text(json.dumps({
        "messages": [{"role": "system", "content": HOSTILE["system"]}, {"role": "user", "content": HOSTILE["prompt"]}],
        "candidates": [{"text": HOSTILE["a"], "model": "<img src=http://203.0.113.9/m.png>model-x"},
                       {"text": HOSTILE["b"], "model": "model|<b>y</b>"}]}) + "\n")
    # overlap 2: the page first shows the item to the default name (the OS user), then to "eve"
    session = prepare_session(pairs=str(cands), db=str(tmp_path / "label.sqlite"), overlap=2)
    port = free_port()
    demo = launch(session, host="127.0.0.1", port=port)
    own = (f"http://127.0.0.1:{port}/", f"ws://127.0.0.1:{port}/", "data:", "blob:")
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(f"http://127.0.0.1:{port}/")
            name = page.locator("#annotator-name textarea, #annotator-name input")
            name.fill("eve <img src=/annotator.png>")
            name.press("Enter")
            expect(page.locator("#progress")).to_contain_text("eve <img src=/annotator.png>: 0 judged",
                                                              timeout=30_000)
            texts = dict(zip(("a", "b"), shown(page)))
            if "Bold stays" in texts["a"]:  # A/B order is random per item
                texts = {"a": texts["b"], "b": texts["a"]}
            # raw HTML reads as written; a Markdown image reads as its source
            assert "It is <img src=x> text. <script>window.pwned = 1</script>" in texts["a"]
            assert "![cat](http://203.0.113.9/cat.png)" in texts["a"]
            assert "<iframe src=http://203.0.113.9/f></iframe>" in texts["b"]
            conversation = page.inner_text("#conversation")
            assert "Is <img src=x> an <b>image</b>? See ![logo](http://203.0.113.9/logo.png) & &lt;ok&gt;" in \
                conversation
            assert HOSTILE["system"] in page.inner_text("#system")
            # Markdown formatting stays
            assert page.locator("#response-a strong, #response-b strong").inner_text() == "Bold stays"
            assert page.locator("#response-a code, #response-b code").inner_text() == "<code>"
            # no element was made from the text, no script ran
            hostile = "#response-a :is(img,script,iframe), #response-b :is(img,script,iframe), " \
                      "#conversation :is(img,iframe), #system :is(img,b), #progress img"
            assert page.locator(hostile).count() == 0
            assert page.evaluate("window.pwned") is None
            page.screenshot(path=str(ARTIFACTS / "label-browser-escaped.png"), full_page=True)

            page.locator("#vote-a").click()
            expect(page.locator("#reveal")).to_contain_text("Saved vote #1", timeout=20_000)
            reveal = page.inner_text("#reveal")
            assert "<img src=http://203.0.113.9/m.png>model-x" in reveal and "model|<b>y</b>" in reveal
            page.get_by_text("Statistics", exact=True).click()
            page.locator("#refresh-stats").click()
            expect(page.locator("#stats")).to_contain_text("eve <img src=/annotator.png>", timeout=20_000)
            assert page.locator("#reveal img, #reveal b, #stats img").count() == 0
            browser.close()
    finally:
        demo.close()
    assert [u for u in requests if not u.startswith(own)] == []  # nothing remote
    fetched_from_text = [u for u in requests if u.split("?")[0].endswith(("/x", ".png", "/f"))]
    assert fetched_from_text == []  # nor the relative URLs in the text (<img src=x>, /annotator.png)


def test_a_double_click_on_a_vote_button_stores_one_vote(tmp_path):
    """Two quick clicks send the vote twice (the button stays enabled while the first is saved): one vote counts,
    and the second click does not also vote on the item shown next."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    from playwright.sync_api import expect, sync_playwright

    write_candidates(tmp_path / "cands.jsonl")
    db = tmp_path / "label.sqlite"
    session = prepare_session(pairs=str(tmp_path / "cands.jsonl"), db=str(db), overlap=1, seed=3)
    port = free_port()
    demo = launch(session, host="127.0.0.1", port=port)
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            name = page.locator("#annotator-name textarea, #annotator-name input")
            name.fill("dora")
            name.press("Enter")
            expect(page.locator("#progress")).to_contain_text("dora: 0 judged", timeout=30_000)
            page.locator("#vote-b").dblclick()
            expect(page.locator("#reveal")).to_contain_text("Saved vote #1", timeout=20_000)
            page.wait_for_timeout(1500)  # let a second request, if any, finish
            expect(page.locator("#progress")).to_contain_text("dora: 1 judged")
            browser.close()
    finally:
        demo.close()
    with Store(db) as store:
        votes = store.votes()
    assert len(votes) == 1 and votes[0]["annotator"] == "dora"
