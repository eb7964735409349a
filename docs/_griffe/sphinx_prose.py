"""A Griffe extension for the API reference: reST habits of the docstrings, as Markdown.

The docstrings use Sphinx field lists (``:param x:``), which mkdocstrings parses
(``docstring_style: sphinx``), but the rest of their text is rendered as Markdown. Two
reST habits do not survive that: a ``>>>`` example renders as nested block quotes, and a
role such as ``:class:`Session``` shows literally. This extension rewrites both in the
loaded docstrings (never in the source): doctest blocks become ``pycon`` code blocks
without their ``# doctest:`` directives, and roles become code spans.

It is only loaded by mkdocs.yml and is excluded from the built site.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_ROLE = re.compile(r":(?:class|meth|func|mod|attr|exc|data|obj):`(~?)([^`]+)`")
_DIRECTIVE = re.compile(r"\s*#\s*doctest:.*$")


def _role(match: re.Match[str]) -> str:
    target = match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


def _fence_doctests(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.lstrip().startswith(">>>"):
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(line.lstrip())]
        out.append(f"{indent}```pycon")
        while i < len(lines) and lines[i].strip():
            out.append(indent + _DIRECTIVE.sub("", lines[i][len(indent) :]).rstrip())
            i += 1
        out.append(f"{indent}```")
    return "\n".join(out)


class SphinxProse(Extension):
    """Rewrite doctest blocks and reST roles of every docstring that is loaded."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _fence_doctests(_ROLE.sub(_role, obj.docstring.value))
