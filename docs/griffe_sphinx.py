"""A Griffe extension that turns the Sphinx markup of fixpoint's docstrings into Markdown.

The docstrings are NumPy style, written for readers of the source and of ``help()``: they use
Sphinx roles (``:math:`...```, ``:class:`~fixpoint.Picard```) and ``.. math::`` blocks. The
API reference is rendered by mkdocstrings, whose docstring descriptions are Markdown, so this
extension rewrites each docstring once Griffe has loaded the package:

- ``:math:`x``` becomes ``$x$`` and a ``.. math::`` block becomes a ``$$ ... $$`` block, which
  ``pymdownx.arithmatex`` hands to KaTeX;
- a grouped entry of a Parameters section (``atol, rtol``) becomes one entry per name, so that
  each shows its own type and default (Griffe would give all of them the first one's), and a
  prose paragraph written after the entries of a section is moved before it;
- ``:class:``, ``:func:``, ``:meth:``, ``:attr:``, ``:mod:``, ``:exc:``, ``:data:`` and ``:obj:``
  become cross-references ``[`name`][full.path]`` that mkdocs-autorefs links to the API pages
  (names are resolved in the scope of the docstring's object, as Sphinx does); a name that is
  private (a ``_`` component) or cannot be resolved stays as inline code.

Registered in ``mkdocs.yml`` under the Python handler's ``options: extensions:``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

MATH_ROLE = re.compile(r":math:`([^`]+)`")
XREF_ROLE = re.compile(r":(?:py:)?(class|func|meth|attr|mod|exc|data|obj):`(~?)([^`]+)`")
MATH_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<first>.*)$")
# Sections whose entries are ``name`` lines with indented descriptions.
ENTRY_SECTIONS = {"parameters", "other parameters", "attributes", "class attributes"}
# What an entry line of such a section may look like: ``name``, ``a, b``, ``*args``,
# ``name : type``.
ENTRY_LINE = re.compile(r"^\*{0,2}\w+(\s*,\s*\*{0,2}\w+)*(\s*:.*)?$")


def _is_underline(line: str) -> bool:
    return len(line.strip()) >= 3 and set(line.strip()) == {"-"}


GROUPED_NAMES = re.compile(r"^\w+(\s*,\s*\w+)+$")


def split_grouped_parameters(text: str) -> str:
    """Give each name of a grouped entry (``atol, rtol``) of a Parameters section its own entry.

    Griffe gives every name of a grouped entry the type and default of the first name it finds
    in the signature, so ``atol, rtol, max_iter`` would all show ``atol``'s. Separate entries,
    each with the shared description, get their own from the signature.
    """
    lines = text.split("\n")
    out: list[str] = []
    section = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if i + 1 < len(lines) and line.strip() and _is_underline(lines[i + 1]):
            section = line.strip().lower()
        if (
            section in ("parameters", "other parameters")
            and not line.startswith(" ")
            and GROUPED_NAMES.match(line.strip())
        ):
            end = i + 1
            while end < len(lines) and (lines[end].startswith(" ") or not lines[end].strip()):
                if not lines[end].strip() and not (
                    end + 1 < len(lines) and lines[end + 1].startswith(" ")
                ):
                    break
                end += 1
            description = lines[i + 1 : end]
            for name in line.split(","):
                out += [name.strip(), *description]
            i = end
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def move_trailing_prose(text: str) -> str:
    """Move a prose paragraph that follows the entries of a Parameters-like section before it.

    In NumPy style a section runs until the next section header, so a paragraph written after
    the entries (``Subclasses implement ...``) would be read as more entries. It is moved to
    just above the section header, where it reads the same and parses as description.
    """
    lines = text.split("\n")
    i = 0
    while i + 1 < len(lines):
        if not (
            lines[i].strip().lower() in ENTRY_SECTIONS
            and not lines[i].startswith(" ")
            and _is_underline(lines[i + 1])
        ):
            i += 1
            continue
        header = i
        j = i + 2
        while j < len(lines):
            if j + 1 < len(lines) and lines[j].strip() and _is_underline(lines[j + 1]):
                break  # the next section
            starts_paragraph = not lines[j - 1].strip() and lines[j].strip()
            if starts_paragraph and not lines[j].startswith(" "):
                if not ENTRY_LINE.match(lines[j].strip()):
                    end = j
                    while end < len(lines) and not (
                        end + 1 < len(lines)
                        and lines[end].strip()
                        and _is_underline(lines[end + 1])
                    ):
                        if (
                            not lines[end].strip()
                            and end + 1 < len(lines)
                            and ENTRY_LINE.match(lines[end + 1].strip())
                        ):
                            break
                        end += 1
                    prose = [line for line in lines[j:end]]
                    while prose and not prose[-1].strip():
                        prose.pop()
                    del lines[j:end]
                    lines[header:header] = [*prose, ""]
                    header += len(prose) + 1
                    j += len(prose) + 1
                    continue
            j += 1
        i = j
    return "\n".join(lines)


def convert_math_blocks(text: str) -> str:
    """Replace each ``.. math::`` directive (and its indented continuation) by a ``$$`` block."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = MATH_DIRECTIVE.match(lines[i])
        if match is None:
            out.append(lines[i])
            i += 1
            continue
        indent = match["indent"]
        body = [match["first"].strip()] if match["first"].strip() else []
        i += 1
        # The directive's content: following lines indented deeper than the directive, with
        # blank lines allowed inside.
        while i < len(lines):
            line = lines[i]
            if line.strip() and len(line) - len(line.lstrip()) <= len(indent):
                break
            if line.strip():
                body.append(line.strip())
            elif (
                i + 1 < len(lines)
                and lines[i + 1].strip()
                and (len(lines[i + 1]) - len(lines[i + 1].lstrip()) <= len(indent))
            ):
                break
            i += 1
        if out and out[-1].strip():
            out.append("")
        out += [f"{indent}$$", *(f"{indent}{b}" for b in body), f"{indent}$$", ""]
        while i < len(lines) and not lines[i].strip():
            i += 1
    return "\n".join(out).rstrip("\n")


def _is_private(path: str) -> bool:
    return any(p.startswith("_") and not p.endswith("__") for p in path.split("."))


def _lookup(obj: griffe.Object, path: str) -> griffe.Object | griffe.Alias | None:
    """The object at the absolute ``path`` in ``obj``'s package, or ``None``."""
    head, _, rest = path.partition(".")
    if head != obj.package.name:
        return None
    try:
        return obj.package[rest] if rest else obj.package
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def resolve_target(obj: griffe.Object, name: str) -> str | None:
    """The full path of ``name`` seen from ``obj``'s docstring, or ``None`` if unknown."""
    name = name.strip().removesuffix("()")
    first, _, rest = name.partition(".")
    if first == obj.package.name:
        path = name
    else:
        try:
            path = obj.resolve(first)
        except griffe.NameResolutionError:
            return None
        path = f"{path}.{rest}" if rest else path
    target = _lookup(obj, path)
    if target is None:
        return None
    # ``fixpoint.solve`` is both a module and the function it defines and the package
    # re-exports: Griffe sees the module, the reader means the function.
    if target.is_module and target.name in target.members:
        member = target.members[target.name]
        if not member.is_module:
            path = f"{path}.{target.name}"
            target = member
    # The API pages render only objects with a docstring: others have no anchor to link to.
    try:
        documented = target.docstring is not None
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        documented = False
    return path if documented else None


def convert_roles(text: str, obj: griffe.Object) -> str:
    """Replace Sphinx inline roles by KaTeX math and autorefs cross-references."""
    text = MATH_ROLE.sub(lambda m: f"${m[1].strip()}$", text)

    def xref(match: re.Match[str]) -> str:
        _role, tilde, name = match.groups()
        label = name.split(".")[-1] if tilde else name
        path = resolve_target(obj, name)
        if path is None or _is_private(path):
            return f"`{label}`"
        return f"[`{label}`][{path}]"

    return XREF_ROLE.sub(xref, text)


def to_markdown(text: str, obj: griffe.Object) -> str:
    """Convert a whole docstring."""
    text = split_grouped_parameters(move_trailing_prose(text))
    return convert_roles(convert_math_blocks(text), obj)


class SphinxMarkup(griffe.Extension):
    """Rewrite every docstring of the loaded package once its object tree is complete."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and not obj.is_alias:
            obj.docstring.value = to_markdown(obj.docstring.value, obj)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        # Older Griffe releases have no ``on_object`` hook: walk the tree here instead.
        if hasattr(griffe.Extension, "on_object"):
            return
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            self.on_object(obj=obj)
            stack.extend(m for m in obj.members.values() if not m.is_alias)
