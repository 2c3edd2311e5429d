"""`prefloop label`: validate the inputs, fill the store with items, and serve the labeling page.

Safety: binds to 127.0.0.1 unless told otherwise, and any other address requires --auth (or an
explicit --insecure; the policy is `prefloop.exposure`, shared with `prefloop serve`); Gradio's
analytics and telemetry are off and the app is never shared through a tunnel. Every input (item
file, prompts, users file, database, models) is checked before the server starts.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from prefloop.errors import ConfigError, DataError
from prefloop.exposure import check_exposure
from prefloop.label.session import LabelSession
from prefloop.label.sources import load_items, load_prompts
from prefloop.store import Store

def read_auth_file(path: str) -> list[tuple[str, str]]:
    """Users file: one `name:password` per line; blank lines and `#` comments ignored."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--auth {path}: file not found; write one 'name:password' per line")
    users, seen = [], set()
    for lineno, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, password = line.partition(":")
        if not sep or not name.strip() or not password:
            raise ConfigError(f"{path}:{lineno}: expected 'name:password'")
        if name.strip() in seen:
            raise ConfigError(f"{path}:{lineno}: user {name.strip()!r} appears twice")
        seen.add(name.strip())
        users.append((name.strip(), password))
    if not users:
        raise ConfigError(f"--auth {path}: no users; write one 'name:password' per line")
    return users


def parse_dimensions(text: str | None) -> list[str]:
    """The rating dimensions of `--dimensions "helpfulness,safety"`; [] when not given or empty. Raises
    ConfigError for an empty entry (",", "a,,b"), a name given twice, or one that is not a simple name."""
    if text is None or not text.strip():  # not given, or given empty (`--dimensions "$DIMS"` with DIMS unset)
        return []
    parts = [d.strip() for d in text.split(",")]
    if not all(parts):
        raise ConfigError(f"--dimensions {text!r} has an empty name; give names separated by commas, e.g. "
                          "helpfulness,safety")
    dims = parts
    if len(set(dims)) != len(dims):
        raise ConfigError(f"--dimensions {text!r} names a dimension twice")
    for dim in dims:
        if not dim.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"--dimensions: {dim!r} is not a simple name (letters, digits, '_' or '-')")
    return dims


def validate_options(pairs, model_a, model_b, prompts, host, auth, overlap, insecure=False) -> str | None:
    """Check the options together; raises ConfigError, returns a warning to print (or None)."""
    if bool(model_a) != bool(model_b):
        raise ConfigError("live mode needs both --model-a and --model-b")
    if not pairs and not (model_a and model_b):
        raise ConfigError("nothing to label: give --pairs CANDIDATES.jsonl, or --model-a and --model-b for live mode")
    if prompts and not model_a:
        raise ConfigError("--prompts is for live mode; add --model-a and --model-b")
    if overlap < 1:
        raise ConfigError(f"--overlap must be at least 1, got {overlap}")
    return check_exposure("label", host, bool(auth), "--auth users.txt", insecure)


def prepare_session(pairs=None, model_a=None, model_b=None, prompts=None, db="prefloop.sqlite",
                    dimensions=None, overlap=1, seed=0, store: Store | None = None) -> LabelSession:
    """Everything the server needs, validated: the store filled with items, the models loaded."""
    items, skipped = (load_items(pairs) if pairs else ([], 0))
    prompt_list = load_prompts(prompts) if prompts else []
    store = store or Store(db)
    before = len(store.label_item_ids())
    for item in items:
        store.add_label_item(item.prompt, item.response_a, item.response_b, item.source_a, item.source_b,
                             item.origin)
    added = len(store.label_item_ids()) - before
    if pairs:
        print(f"{pairs}: {len(items)} comparison items ({added} new in {store.path})"
              + (f"; {skipped} prompts skipped (fewer than 2 different responses)" if skipped else ""))
    responders = None
    if model_a and model_b:
        from prefloop.label.live import make_responder

        responders = (make_responder(model_a), make_responder(model_b))
        if responders[0].name == responders[1].name:  # keep the two sides apart in reveals and provenance
            responders[0].name += " (--model-a)"
            responders[1].name += " (--model-b)"
        print(f"live mode: model A = {responders[0].name}, model B = {responders[1].name}")
    return LabelSession(store, overlap=overlap, seed=seed, dimensions=parse_dimensions(dimensions),
                        responders=responders, prompts=prompt_list)


def launch(session: LabelSession, host: str = "127.0.0.1", port: int = 7860,
           users: list[tuple[str, str]] | None = None):
    """Start the server without blocking; returns the Gradio Blocks (call `.close()` to stop)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    from prefloop.label.ui import CSS, KEYBOARD_JS, build_app

    demo = build_app(session, auth=bool(users))
    try:
        demo.queue(default_concurrency_limit=8).launch(
            server_name=host, server_port=port, auth=users or None, share=False, prevent_thread_lock=True,
            quiet=True, show_error=True, ssr_mode=False, head=KEYBOARD_JS, css=CSS, footer_links=[],
            auth_message="Log in with your prefloop annotator name." if users else None)
    except OSError as err:
        raise ConfigError(f"cannot listen on {host}:{port} ({err}); choose another --port") from err
    return demo


def label_command(pairs=None, model_a=None, model_b=None, prompts=None, db="prefloop.sqlite", host="127.0.0.1",
                  port=7860, auth=None, dimensions=None, overlap=1, seed=0, insecure=False) -> int:
    """`prefloop label`: serve the labeling page until Ctrl-C."""
    warning = validate_options(pairs, model_a, model_b, prompts, host, auth, overlap, insecure)
    if warning:
        print(warning, file=sys.stderr)
    users = read_auth_file(auth) if auth else None
    for path, flag in ((pairs, "--pairs"), (prompts, "--prompts")):
        if path and not Path(path).exists():
            raise DataError(f"{flag} {path}: file not found; check the path")
    session = prepare_session(pairs, model_a, model_b, prompts, db, dimensions, overlap, seed)
    demo = None
    try:  # Ctrl-C may come while Gradio is still starting (the page already answers then)
        demo = launch(session, host, port, users)
        print(f"labeling at http://{host}:{port}  (votes go to {session.store.path}; Ctrl-C to stop)", flush=True)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print("stopping")
    finally:
        if demo is not None:
            demo.close()
        session.store.close()
    return 0
