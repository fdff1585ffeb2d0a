"""Title, `where` and signature templates of the formats table (formats.toml's opening comment).

``{name}`` is a field, ``{a|b|'text'}`` the first non-empty of fields a and b, else the text; ``[...]`` is a
part left out when a field in it is empty (``possible deadlock[ in {fn}]``); ``[[``, ``]]``, ``{{``, ``}}``
are literal brackets and braces.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    """``{a|b|'text'}`` in a template."""
    names: tuple[str, ...]
    default: str


@dataclass(frozen=True)
class Template:
    text: str
    parts: tuple[tuple[bool, tuple[str | Field, ...]], ...]      # (optional, pieces)

    @property
    def fields(self) -> set[str]:
        return {n for _, pieces in self.parts for p in pieces if isinstance(p, Field) for n in p.names}

    def render(self, values: dict[str, str]) -> str:
        out = []
        for optional, pieces in self.parts:
            rendered = []
            for p in pieces:
                if isinstance(p, str):
                    rendered.append(p)
                    continue
                v = next((values[n] for n in p.names if values.get(n)), p.default)
                if not v and optional:
                    rendered = []
                    break
                rendered.append(v)
            out.extend(rendered)
        return "".join(out)


_FIELD = re.compile(r"\{([^{}]*)\}")
_NAME = re.compile(r"[a-z_][a-z0-9_]*$")


def parse_template(text: str) -> Template:
    """A Template, or ValueError saying what is wrong with `text`."""
    parts: list[tuple[bool, tuple[str | Field, ...]]] = []
    cur: list[str | Field] = []
    optional = False
    i = 0
    while i < len(text):
        two = text[i:i + 2]
        if two in ("[[", "]]", "{{", "}}"):
            cur.append(two[0])
            i += 2
            continue
        c = text[i]
        if c in "[]":
            if (c == "[") == optional:
                raise ValueError(f"unbalanced {c!r} at {i} in {text!r}")
            parts.append((optional, tuple(cur)))
            cur, optional = [], c == "["
            i += 1
        elif c == "{":
            m = _FIELD.match(text, i)
            if not m:
                raise ValueError(f"unclosed '{{' at {i} in {text!r}")
            alts = [a.strip() for a in m.group(1).split("|")]
            default = alts.pop()[1:-1] if len(alts) > 1 and re.fullmatch(r"'[^']*'", alts[-1]) else ""
            bad = [a for a in alts if not _NAME.match(a)]
            if bad or not alts:
                raise ValueError(f"bad field {m.group(0)!r} in {text!r}")
            cur.append(Field(tuple(alts), default))
            i = m.end()
        elif c == "}":
            raise ValueError(f"unmatched '}}' at {i} in {text!r}")
        else:
            cur.append(c)
            i += 1
    if optional:
        raise ValueError(f"unclosed '[' in {text!r}")
    parts.append((False, tuple(cur)))
    return Template(text, tuple((o, _join(p)) for o, p in parts if p))


def _join(pieces: list[str | Field] | tuple[str | Field, ...]) -> tuple[str | Field, ...]:
    out: list[str | Field] = []
    for p in pieces:
        if isinstance(p, str) and out and isinstance(out[-1], str):
            out[-1] += p
        else:
            out.append(p)
    return tuple(out)
