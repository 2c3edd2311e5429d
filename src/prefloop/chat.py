"""`prefloop chat`: talk to a model (and a trained adapter) in the terminal, the answer streaming as
it is sampled.

Each turn renders the whole conversation with the model's chat template and decodes it with the
one sampler (`prefloop.sampling.LocalGenerator`), the same code that serves, generates candidates
and judges. Commands: `/reset` forgets the conversation (the --system text stays), `/exit` (or
end of input, Ctrl-D) quits; Ctrl-C stops an answer being written (it is not kept). With piped
input the user's lines are echoed, so the output reads as a transcript.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import TextIO

from prefloop.errors import ConfigError, DataError
from prefloop.render import terminal_text
from prefloop.sampling import LocalGenerator, PromptTooLong, Sample, SamplingParams

COMMANDS = {"/reset": "forgets the conversation (the --system text stays)", "/exit": "quits (Ctrl-D too)"}
HELP = "commands: " + ", ".join(f"{name} {what}" for name, what in COMMANDS.items())


class ChatSession:
    """A conversation with one local model: `send(text, out)` streams the answer to `out` and keeps
    the turn; `reset()` forgets every turn but the system message."""

    def __init__(self, generator: LocalGenerator, system: str | None = None, params: SamplingParams | None = None,
                 max_new_tokens: int | None = None):
        self.generator = generator
        self.system = system
        self.params = params or SamplingParams()
        self.max_new_tokens = max_new_tokens  # None: what the context leaves after the conversation
        self.messages: list[dict] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def budget(self, prompt_tokens: int) -> int:
        """Tokens the answer may take: --max-new-tokens, at most what the model's context leaves.
        Raises ConfigError when the conversation fills the context (then /reset)."""
        context = self.generator.context_length
        if context is None:
            if self.max_new_tokens is None:
                raise ConfigError("this model does not state its context length: give --max-new-tokens")
            return self.max_new_tokens
        left = context - prompt_tokens
        if left < 1:
            raise ConfigError(f"the conversation takes {prompt_tokens} tokens and fills the model's context of "
                              f"{context}; type /reset to start over")
        return left if self.max_new_tokens is None else min(left, self.max_new_tokens)

    def send(self, text: str, out: TextIO) -> Sample:
        """Answer `text` given the conversation so far, streaming the answer to `out` (control
        characters escaped); returns the Sample (text, token ids, finish reason "stop" or "length").
        The turn is kept only once the answer is complete (an error or Ctrl-C leaves the
        conversation as it was). Raises ConfigError when the conversation fills the context."""
        messages = [*self.messages, {"role": "user", "content": text}]
        try:
            prompt = self.generator.encode_chat(messages)
        except PromptTooLong as err:
            raise ConfigError(f"the conversation takes {err.prompt_tokens} tokens and fills the model's context of "
                              f"{err.context_length}; type /reset to start over") from err
        params = replace(self.params, max_new_tokens=self.budget(len(prompt)))

        def on_update(row, delta, logprobs, finished):
            out.write(terminal_text(delta))
            out.flush()

        [sample] = self.generator.generate([(prompt, params)], on_update=on_update)
        out.write("\n")
        out.flush()
        self.messages = [*messages, {"role": "assistant", "content": sample.text}]
        return sample


def _read_line(stdin: TextIO, out: TextIO, interactive: bool) -> str | None:
    """The next line without its newline, or None at end of input (Ctrl-D) or Ctrl-C at the prompt.
    A terminal gets `input()` (line editing and history through readline)."""
    try:
        if interactive:
            return input("User: ")
        out.write("User: ")
        out.flush()
        line = stdin.readline()
        return line.rstrip("\r\n") if line else None
    except (EOFError, KeyboardInterrupt):
        return None


def run_chat(session: ChatSession, stdin: TextIO, out: TextIO, err: TextIO, interactive: bool) -> int:
    """The read-answer loop. Lines from `stdin`; answers to `out`; notes to `err`. Returns 0."""
    if interactive:
        try:
            import readline  # noqa: F401 - gives input() line editing and history
        except ImportError:
            pass
    while True:
        text = _read_line(stdin, out, interactive)
        if text is None:
            out.write("\n")
            return 0
        if not interactive:
            out.write(terminal_text(text) + "\n")  # piped input: echo it, so the output reads as a transcript
        command = text.strip()
        if command == "/exit":
            return 0
        if command == "/reset":
            session.reset()
            err.write("(conversation reset)\n")
            continue
        if command.startswith("/") and " " not in command:
            err.write(f"unknown command {command}; {HELP}. To send text that starts with '/', begin with a space.\n")
            continue
        if not command:
            continue
        out.write("Assistant: ")
        out.flush()
        try:
            reason = session.send(text, out).finish_reason
        except KeyboardInterrupt:
            out.write("\n")
            err.write("(answer interrupted; it is not kept)\n")
            continue
        except (ConfigError, DataError) as error:  # e.g. a full context, a template refusing the turns
            out.write("\n")
            err.write(f"prefloop chat: {error}\n")
            continue
        if reason == "length":
            err.write("(the answer reached the token limit: --max-new-tokens or the model's context)\n")


def chat_command(model, adapter=None, system=None, temperature=0.7, top_p=1.0, max_new_tokens=None,
                 seed=None) -> int:
    """`prefloop chat`: load the model (and adapter), then chat on stdin/stdout until /exit or end of input."""
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if not 0 <= temperature <= 2:
        raise ConfigError(f"--temperature must be between 0 and 2, got {temperature}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"--top-p must be in (0, 1], got {top_p}")
    generator = LocalGenerator.load(model, adapter=adapter)
    params = SamplingParams(temperature=temperature, top_p=top_p, seed=seed)
    session = ChatSession(generator, system=system, params=params, max_new_tokens=max_new_tokens)
    interactive = sys.stdin.isatty()
    print(f"prefloop chat: {model}" + (f" with adapter {adapter}" if adapter else "")
          + f" on {generator.device}; {HELP}", file=sys.stderr)
    return run_chat(session, sys.stdin, sys.stdout, sys.stderr, interactive)
