"""`prefloop chat`: driven through piped stdin (the real CLI process) and in a real terminal (tmux)."""

import io
import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from prefloop.chat import ChatSession, run_chat
from prefloop.errors import ConfigError
from prefloop.render import terminal_text
from prefloop.sampling import LocalGenerator, SamplingParams

SYSTEM = "Be brief."
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [os.path.join(os.path.dirname(__file__), "..", "src"),
                                                               os.environ.get("PYTHONPATH", "")] if p)}


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    return LocalGenerator.load(str(tiny_model_dir))


def greedy(generator, messages, tokens=6) -> str:
    return generator.generate([(generator.encode_chat(messages), SamplingParams(tokens, temperature=0))])[0].text


def chat_cli(model, *args):
    return [sys.executable, "-m", "prefloop", "chat", str(model), "--max-new-tokens", "6", "--temperature", "0", *args]


def test_piped_conversation_with_reset_and_exit(tiny_model_dir, generator):
    first = greedy(generator, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello"}])
    history = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello"},
               {"role": "assistant", "content": first}, {"role": "user", "content": "Again"}]
    second = greedy(generator, history)
    assert second != greedy(generator, [history[0], history[-1]])  # so the history visibly counts
    result = subprocess.run(chat_cli(tiny_model_dir, "--system", SYSTEM), input="Hello\n/reset\nHello\nAgain\n/foo\n"
                            "\n/exit\nNever answered\n", capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"User: Hello\nAssistant: {terminal_text(first)}\nUser: /reset\n"
                             f"User: Hello\nAssistant: {terminal_text(first)}\n"  # after /reset: the first turn again
                             f"User: Again\nAssistant: {terminal_text(second)}\n"  # with the history
                             "User: /foo\nUser: \nUser: /exit\n")  # unknown command and empty line: no answer
    assert "(conversation reset)" in result.stderr and "unknown command /foo" in result.stderr


def test_end_of_input_ends_the_chat(generator):
    out, err = io.StringIO(), io.StringIO()
    session = ChatSession(generator, params=SamplingParams(temperature=0), max_new_tokens=3)
    assert run_chat(session, io.StringIO("Hi"), out, err, interactive=False) == 0  # last line without a newline
    answer = terminal_text(session.messages[-1]["content"])
    assert out.getvalue() == f"User: Hi\nAssistant: {answer}\nUser: \n"


def test_answers_stream_and_turns_are_kept(generator):
    class Writes(io.StringIO):
        def __init__(self):
            super().__init__()
            self.parts = []

        def write(self, text):
            self.parts.append(text)
            return super().write(text)

    session = ChatSession(generator, params=SamplingParams(temperature=0), max_new_tokens=8)
    out = Writes()
    sample = session.send("Hello", out)
    assert sample.text == greedy(generator, [{"role": "user", "content": "Hello"}], 8)
    assert len([p for p in out.parts if p and p != "\n"]) > 1  # written piece by piece as it was sampled
    assert out.getvalue() == terminal_text(sample.text) + "\n"
    assert session.messages == [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": sample.text}]
    session.reset()
    assert session.messages == []


def test_without_a_limit_the_answer_may_fill_the_context(tiny_model_dir, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(tiny_model_dir, path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 60}))
    generator = LocalGenerator.load(str(path))
    no_stop = SamplingParams(temperature=0, logit_bias=tuple((t, -100.0) for t in sorted(generator.stop_ids)))
    session = ChatSession(generator, params=no_stop)
    prompt_tokens = len(generator.encode_chat([{"role": "user", "content": "Hello"}]))
    sample = session.send("Hello", io.StringIO())
    assert len(sample.token_ids) == 60 - prompt_tokens and sample.finish_reason == "length"
    kept = list(session.messages)
    with pytest.raises(ConfigError, match="fills the model's context of 60; type /reset"):
        session.send("more", io.StringIO())
    assert session.messages == kept  # the refused turn is not kept


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_in_a_real_terminal(tiny_model_dir, generator):
    """tmux gives the chat a real terminal (stdin is a TTY: input() with line editing)."""
    first = terminal_text(greedy(generator, [{"role": "user", "content": "Hello"}]))
    socket, session = f"prefloop-chat-{uuid.uuid4().hex[:8]}", "chat"
    tmux = ["tmux", "-L", socket]
    command = " ".join(["env", f"PYTHONPATH={ENV['PYTHONPATH']}", "OMP_NUM_THREADS=1", *chat_cli(tiny_model_dir)])
    subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "220", "-y", "40",
                    f"{command}; echo CHAT-EXITED-$?; sleep 60"], check=True)

    def screen_until(text, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = subprocess.run([*tmux, "capture-pane", "-p", "-t", session], capture_output=True,
                                    text=True).stdout
            if text in screen:
                return screen
            time.sleep(0.3)
        raise AssertionError(f"{text!r} never appeared on the screen:\n{screen}")

    try:
        screen_until("User:")  # capture-pane drops trailing spaces
        subprocess.run([*tmux, "send-keys", "-t", session, "Hello", "Enter"], check=True)
        screen_until(f"Assistant: {first}")
        subprocess.run([*tmux, "send-keys", "-t", session, "/exit", "Enter"], check=True)
        screen = screen_until("CHAT-EXITED-")
        assert "CHAT-EXITED-0" in screen and "User: Hello\nAssistant: " + first in screen
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


def test_ctrl_c_stops_an_answer_and_the_turn_is_not_kept(generator):
    """Ctrl-C while the answer is being written: the chat goes on, and the cut answer is not in the history."""


    class Interrupting(io.StringIO):
        """Delivers Ctrl-C (KeyboardInterrupt) at the second piece of the first answer, as a terminal would."""

        def __init__(self):
            super().__init__()
            self.pieces = 0

        def write(self, text):
            if text not in ("", "\n") and not text.startswith(("User: ", "Assistant: ")):
                self.pieces += 1
                if self.pieces == 2:
                    raise KeyboardInterrupt
            return super().write(text)

    session = ChatSession(generator, params=SamplingParams(temperature=0), max_new_tokens=8)
    out, err = Interrupting(), io.StringIO()
    assert run_chat(session, io.StringIO("First\nSecond\n"), out, err, interactive=False) == 0
    assert out.pieces > 2  # the second answer was written after the interrupted first one
    assert err.getvalue().count("(answer interrupted; it is not kept)") == 1
    second = greedy(generator, [{"role": "user", "content": "Second"}], 8)  # answered without the cut first turn
    assert session.messages == [{"role": "user", "content": "Second"}, {"role": "assistant", "content": second}]
