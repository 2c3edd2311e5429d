"""Errors a person reads: each says what is wrong, where, and what to do."""


class PrefloopError(Exception):
    """Base class; the CLI prints the message (no traceback) and exits with code 2."""


class ConfigError(PrefloopError):
    """A config key or value is wrong."""


class DataError(PrefloopError):
    """Input data is malformed; the message names file, line and field."""


def json_error_text(err, with_line: bool = True) -> str:
    """A `json.JSONDecodeError` as "malformed JSON at line L, column C: <plain cause>".

    The position is the parser's (1-based line and column of `err.doc`); the cause replaces the
    parser's wording with what a person fixes, e.g. "Invalid control character at" on a line that
    ends inside a string becomes "unterminated string (the string opened at column 12 has no
    closing quote before the line ends)". `with_line=False` leaves the line out (JSON Lines, where
    the caller names the file's line).
    """
    doc, pos, msg = err.doc or "", err.pos, err.msg
    line, column = err.lineno, err.colno
    char = doc[pos] if 0 <= pos < len(doc) else ""
    ends_early = not doc[pos:].strip() and not msg.startswith(("Invalid control", "Unterminated"))
    if ends_early:  # report the end of the text, not the position after its trailing newline
        end = len(doc.rstrip())
        line, column = doc.count("\n", 0, end) + 1, end - (doc.rfind("\n", 0, end) + 1) + 1
    where = f"line {line}, column {column}" if with_line else f"column {column}"
    if ends_early:
        cause = "the text ends before the JSON value is complete (cut off? a closing quote, ']' or '}' is missing)"
    elif msg.startswith("Invalid control character"):
        if char in "\r\n" and not doc[pos:].strip():
            cause = f"unterminated string ({_string_start(doc, pos)} has no closing quote before the line ends)"
        elif char in "\r\n":
            cause = "a line break inside a string (write it as \\n, or close the string with a quote)"
        else:
            cause = f"a raw control character {char!r} inside a string (write a tab as \\t)"
    elif msg.startswith("Unterminated string"):
        cause = f"unterminated string ({_string_start(doc, pos + 1)} has no closing quote)"
    else:
        cause = {
            "Expecting property name enclosed in double quotes":
                "expected a key in double quotes (a trailing comma before '}', or a key in single quotes or none?)",
            "Expecting ':' delimiter": "missing ':' after a key",
            "Expecting ',' delimiter": "missing ',' between two items (or an unquoted word such as None or True)",
            "Expecting value": ("no JSON value here (an empty line, a trailing comma, or a word such as None, True or "
                                "NaN; JSON writes null, true)"),
            "Extra data": "more text after the end of the JSON value (two records on one line?)",
            "Invalid \\escape": "invalid backslash escape in a string (write a backslash as \\\\)",
            "Invalid \\uXXXX escape": "invalid \\u escape in a string (it needs 4 hex digits)",
        }.get(msg, msg[:1].lower() + msg[1:])
    return f"malformed JSON at {where}: {cause}"


def _string_start(doc: str, pos: int) -> str:
    """"the string opened at column C": the last unescaped double quote before `pos` on its line."""
    line_start = doc.rfind("\n", 0, pos) + 1
    at = pos - 1
    while at >= line_start:
        if doc[at] == '"' and (at == line_start or doc[at - 1] != "\\"):
            return f"the string opened at column {at - line_start + 1}"
        at -= 1
    return "a string"
