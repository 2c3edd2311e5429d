"""The labeling page (Gradio Blocks): conversation, two responses, vote buttons, ratings, undo, progress.

Everything the page does goes through `LabelSession`; this module only lays out components and
converts between them and the session. Keyboard shortcuts are a small script in the page head
(`KEYBOARD_JS`) that clicks the vote buttons; it ignores keys typed into text fields.
"""

from __future__ import annotations

import getpass
import os
from html import escape as escape_html

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402

from prefloop.errors import PrefloopError  # noqa: E402
from prefloop.render import escape_markdown, markdown_html  # noqa: E402
from prefloop.label.session import CHOICES, RATING_SCALE, LabelSession, Shown  # noqa: E402
from prefloop.label.stats import format_report, label_stats  # noqa: E402

SHORTCUTS = {"1": "A", "2": "B", "3": "tie", "4": "both_bad", "s": "skip"}
BUTTON_IDS = {"A": "vote-a", "B": "vote-b", "tie": "vote-tie", "both_bad": "vote-both-bad", "skip": "vote-skip"}

KEYBOARD_JS = """
<script>
(() => {
  const ids = %s;
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName))) return;
    const id = ids[event.key.toLowerCase()];
    if (!id) return;
    const element = document.getElementById(id);
    const button = element && (element.tagName === "BUTTON" ? element : element.querySelector("button"));
    if (button && !button.disabled) { event.preventDefault(); button.click(); }
  });
})();
</script>
""" % {key: BUTTON_IDS[choice] for key, choice in SHORTCUTS.items()}.__repr__().replace("'", '"')

CSS = """
.response-box { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 12px; min-height: 120px; }
#shortcut-help { opacity: 0.8; }
"""


def _annotator(name: str | None, request: gr.Request | None, auth: bool) -> str:
    if auth:
        return (request.username if request is not None else None) or ""
    return (name or "").strip()


def _chat(prompt: list[dict]) -> tuple[str, list[dict]]:
    """System prompt (shown above) and the turns for the Chatbot (tool turns shown as user-side notes),
    as HTML from `prefloop.render`: the text reads as written, raw HTML included, and loads nothing."""
    system = "\n\n".join(m["content"] for m in prompt if m["role"] == "system")
    turns = []
    for m in prompt:
        if m["role"] == "system":
            continue
        if m["role"] in ("user", "assistant"):
            turns.append({"role": m["role"], "content": markdown_html(m["content"])})
        else:
            turns.append({"role": "user", "content": f"<p><strong>[{escape_html(m['role'])}]</strong></p>"
                                                     + markdown_html(m["content"])})
    return ("<p><strong>System:</strong></p>" + markdown_html(system) if system else ""), turns


def _progress_text(progress: dict, annotator: str) -> str:
    return (f"**{escape_markdown(annotator or 'anonymous')}**: {progress['mine']} judged, {progress['left']} left "
            f"for you · items complete "
            f"{progress['complete']} / {progress['total']} (each needs {progress['overlap']} annotator"
            f"{'s' if progress['overlap'] > 1 else ''})")


def build_app(session: LabelSession, auth: bool = False, title: str = "prefloop label") -> gr.Blocks:
    """The Blocks app for `session`; `auth` says whether Gradio log-in supplies the annotator id."""
    dims = session.dimensions

    with gr.Blocks(title=title) as demo:
        state = gr.State(None)
        gr.Markdown(f"## {title}: which response is better?")
        gr.Markdown("Keys: **1** = A is better · **2** = B is better · **3** = Tie · **4** = Both bad · "
                    "**S** = Skip (not while typing in a text box)", elem_id="shortcut-help")
        with gr.Row():
            name = gr.Textbox(label="Your name (annotator id)", value=_default_name(), visible=not auth,
                              elem_id="annotator-name", scale=2)
            progress = gr.Markdown(elem_id="progress")
        status = gr.Markdown(elem_id="status")
        reveal = gr.Markdown(elem_id="reveal")
        if session.live:
            with gr.Accordion("Live: ask both models", open=True):
                live_prompt = gr.Textbox(label="Prompt", lines=3, elem_id="live-prompt")
                with gr.Row():
                    draw = gr.Button("Draw a prompt", visible=bool(session.prompts))
                    generate = gr.Button("Generate both responses", variant="primary", elem_id="generate")
        # Model and user text arrives as HTML made by prefloop.render (raw HTML escaped, nothing loaded),
        # so the components show it as given instead of rendering it as Markdown again.
        system_md = gr.HTML(elem_id="system")
        chat = gr.Chatbot(label="Conversation", elem_id="conversation", height=300, buttons=["copy_all"],
                          render_markdown=False)
        with gr.Row(equal_height=True):
            with gr.Column():
                gr.Markdown("### Response A")
                left = gr.HTML(elem_id="response-a", elem_classes=["response-box"])
            with gr.Column():
                gr.Markdown("### Response B")
                right = gr.HTML(elem_id="response-b", elem_classes=["response-box"])
        rating_inputs = []
        if dims:
            with gr.Accordion("Ratings (optional, 1 = poor, 5 = excellent)", open=True):
                for dim in dims:
                    with gr.Row():
                        for side in ("A", "B"):
                            rating_inputs.append(gr.Radio(choices=list(RATING_SCALE), label=f"{dim}: {side}",
                                                          elem_id=f"rate-{dim}-{side.lower()}"))
        reason = gr.Textbox(label="Reason (optional)", lines=2, elem_id="reason")
        with gr.Row():
            buttons = {choice: gr.Button(f"{label} ({key.upper()})", elem_id=BUTTON_IDS[choice],
                                         variant="primary" if choice in ("A", "B") else "secondary")
                       for key, choice in SHORTCUTS.items() for label in [CHOICES[choice]]}
        undo = gr.Button("Undo my last vote", elem_id="undo")
        with gr.Accordion("Statistics", open=False):
            stats_md = gr.Markdown(elem_id="stats")
            refresh_stats = gr.Button("Refresh statistics", elem_id="refresh-stats")

        view = [state, system_md, chat, left, right, progress, reason, *rating_inputs]

        def render(shown: Shown | None, annotator: str) -> list:
            cleared = [None] * len(rating_inputs)
            prog = _progress_text(session.progress(annotator), annotator)
            if shown is None:
                done = "All done: no items are left for you." + (" Type a prompt above to compare the models live."
                                                                 if session.live else "")
                return [None, "", [], markdown_html(done), "", prog, "", *cleared]
            system, turns = _chat(shown.prompt)
            st = {"item_id": shown.item_id, "order": shown.order, "left_source": shown.left_source,
                  "right_source": shown.right_source}
            return [st, system, turns, markdown_html(shown.left), markdown_html(shown.right), prog, "", *cleared]

        def on_load(who, request: gr.Request):
            annotator = _annotator(who, request, auth)
            if not annotator:
                return [*render(None, ""), "Type your name to start."]
            return [*render(session.next_for(annotator), annotator), ""]

        def make_vote(choice: str):
            def vote(st, who, why, request: gr.Request, *ratings):  # gradio inserts `request` here
                annotator = _annotator(who, request, auth)
                if not annotator:
                    return [st, *[gr.update()] * (len(view) - 1), "Type your name first.", gr.update()]
                if not st:
                    return [st, *[gr.update()] * (len(view) - 1), "Nothing to vote on.", gr.update()]
                shown_ratings = {dim: {"A": ratings[2 * i], "B": ratings[2 * i + 1]} for i, dim in enumerate(dims)}
                try:
                    vote_id = session.save_vote(annotator, st["item_id"], st["order"], choice, shown_ratings, why)
                except PrefloopError as err:  # nothing was stored: say so, keep the item on screen
                    return [st, *[gr.update()] * (len(view) - 1), f"Not saved: {escape_markdown(err)}", gr.update()]
                told = (f"Saved vote #{vote_id}: **{CHOICES[choice]}**. Response A was "
                        f"**{escape_markdown(st['left_source'] or '?')}**, response B was "
                        f"**{escape_markdown(st['right_source'] or '?')}**.")
                return [*render(session.next_for(annotator), annotator), "", told]
            return vote

        def on_undo(st, who, request: gr.Request):
            annotator = _annotator(who, request, auth)
            item_id = session.undo(annotator) if annotator else None
            if item_id is None:
                return [st, *[gr.update()] * (len(view) - 1), "Nothing to undo.", gr.update()]
            shown = session.show(item_id, annotator)
            return [*render(shown, annotator), session.undo_message(annotator, item_id), ""]

        outputs = [*view, status, reveal]
        for choice, button in buttons.items():
            button.click(make_vote(choice), inputs=[state, name, reason, *rating_inputs], outputs=outputs,
                         concurrency_limit=None)
        undo.click(on_undo, inputs=[state, name], outputs=outputs, concurrency_limit=None)
        demo.load(on_load, inputs=[name], outputs=[*view, status])
        name.submit(on_load, inputs=[name], outputs=[*view, status])
        refresh_stats.click(lambda: format_report(label_stats(session.store.votes()), name=escape_markdown),
                            outputs=[stats_md])

        if session.live:
            def on_generate(text, who, drawn, request: gr.Request):
                annotator = _annotator(who, request, auth)
                if not annotator:
                    return [*[gr.update()] * len(view), "Type your name first."]
                prompt = drawn if drawn and drawn[-1]["content"] == text else [{"role": "user", "content": text or ""}]
                try:
                    item_id = session.generate(annotator, prompt)
                except PrefloopError as err:
                    return [*[gr.update()] * len(view), f"Could not generate: {escape_markdown(err)}"]
                except Exception as err:  # a model or endpoint failure must not kill the page
                    return [*[gr.update()] * len(view),
                            f"Could not generate: {type(err).__name__}: {escape_markdown(err)}"]
                return [*render(session.show(item_id, annotator), annotator), "Both models answered; vote below."]

            drawn_prompt = gr.State(None)  # the whole drawn conversation (the box shows its last turn)
            generate.click(on_generate, inputs=[live_prompt, name, drawn_prompt], outputs=[*view, status])
            counter = {"next": 0}

            def on_draw():
                prompt = session.prompts[counter["next"] % len(session.prompts)]
                counter["next"] += 1
                return prompt[-1]["content"], prompt

            draw.click(on_draw, outputs=[live_prompt, drawn_prompt])
    return demo


def _default_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""
