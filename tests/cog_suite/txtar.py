"""The txtar archive format and testscript's line syntax (words, quotes,
conditions, `$VAR` expansion), as go-internal's testscript reads them."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

_FILE_MARKER = re.compile(r"^-- (.+) --$")
_VAR = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*|[/:]))")


@dataclass
class Archive:
    script: str
    files: dict[str, str] = field(default_factory=dict)


def parse_archive(text: str) -> Archive:
    """The comment section (the script) up to the first `-- name --` line, then the files."""
    script: list[str] = []
    files: dict[str, list[str]] = {}
    current: list[str] = script
    for line in text.splitlines(keepends=True):
        marker = _FILE_MARKER.match(line.rstrip("\n"))
        if marker:
            current = files.setdefault(marker.group(1).strip(), [])
        else:
            current.append(line)
    return Archive("".join(script), {name: "".join(lines) for name, lines in files.items()})


@dataclass
class Line:
    number: int
    conditions: list[str]  # e.g. ["short", "!linux"]
    negate: bool
    words: list[str]  # command first, expanded


def expand(text: str, getenv: Callable[[str], str]) -> str:
    """Go's os.Expand: $NAME and ${NAME}; ${/} is the path separator."""
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) if m.group(1) is not None else m.group(2)
        return {"/": "/", ":": ":"}.get(name) or getenv(name)
    return _VAR.sub(sub, text)


def split_words(text: str, getenv: Callable[[str], str]) -> list[str]:
    """testscript's words: spaces separate, single quotes group (with '' for a quote)
    and stop expansion, a word starting with # ends the line."""
    words: list[str] = []
    word: list[str] = []
    in_word = False
    i = 0
    while i < len(text):
        c = text[i]
        if c == "'":
            end = i + 1
            chunk: list[str] = []
            while end < len(text):
                if text[end] == "'":
                    if text[end + 1:end + 2] == "'":
                        chunk.append("'")
                        end += 2
                        continue
                    break
                chunk.append(text[end])
                end += 1
            if end >= len(text):
                raise ValueError(f"unterminated quote in: {text}")
            word.append("".join(chunk))
            in_word = True
            i = end + 1
            continue
        if c in " \t":
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
            i += 1
            continue
        if c == "#" and not in_word:
            break
        start = i
        while i < len(text) and text[i] not in " \t'":
            i += 1
        word.append(expand(text[start:i], getenv))
        in_word = True
    if in_word:
        words.append("".join(word))
    return words


def parse_line(number: int, text: str, getenv: Callable[[str], str]) -> Line | None:
    """One script line, or None for blanks and comments. Expansion happens here,
    at run time, so `env` changes apply to the lines after it."""
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None
    conditions: list[str] = []
    negate = False
    while True:
        if stripped.startswith("["):
            end = stripped.index("]")
            conditions.append(stripped[1:end].strip())
            stripped = stripped[end + 1:].lstrip()
        elif stripped.startswith("! "):
            negate = True
            stripped = stripped[2:].lstrip()
        else:
            break
    words = split_words(stripped, getenv)
    return Line(number, conditions, negate, words) if words else None


_POSIX_CLASSES = {"alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "space": r"\s", "upper": "A-Z",
                  "lower": "a-z", "xdigit": "0-9a-fA-F", "punct": r"!-/:-@\[-`{-~", "word": r"\w"}


def go_regexp(pattern: str) -> re.Pattern[str]:
    """Go RE2 syntax in Python's re, multi-line as testscript matches: \\z and
    POSIX classes translated; the rest of what the suite uses is common syntax."""
    translated = pattern.replace(r"\z", r"\Z")
    for name, chars in _POSIX_CLASSES.items():
        translated = translated.replace(f"[:{name}:]", chars)
    return re.compile(translated, re.MULTILINE)
