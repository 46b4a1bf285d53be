"""YAML documents with the line of every key and item (pure).

PyYAML's safe loader forgets where things were; this composes the node tree
and builds plain Python values from it, recording ``path -> line`` for every
mapping key and sequence item, so a problem can name its line. Duplicate keys,
which PyYAML would silently resolve to the last one, are problems too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
import yaml.constructor

Path = tuple[str | int, ...]


@dataclass
class Document:
    """One ``---`` document: its data, and the 1-based line of each path."""

    data: Any
    index: int
    lines: dict[Path, int] = field(default_factory=dict)
    problems: list[tuple[Path, int, str]] = field(default_factory=list)

    def line(self, path: Path) -> int:
        """The line of ``path``, or of its nearest recorded parent."""
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path, 1)


class YamlError(ValueError):
    """Not YAML: the message names the line."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class _Constructor(yaml.constructor.SafeConstructor):
    pass


def load_documents(text: str) -> list[Document]:
    """Every document of ``text``; raises :class:`YamlError` if it is not YAML."""
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise YamlError(line, f"not valid YAML: {e.problem or e}") from e
    except yaml.YAMLError as e:
        raise YamlError(1, f"not valid YAML: {e}") from e
    docs = []
    for i, node in enumerate(nodes):
        doc = Document(data=None, index=i)
        constructor = _Constructor()
        try:
            doc.data = _convert(node, (), doc, constructor)
        except yaml.constructor.ConstructorError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark is not None else 1
            raise YamlError(line, f"not valid YAML: {e.problem or e}") from e
        docs.append(doc)
    return docs


def _convert(node: yaml.Node, path: Path, doc: Document, c: _Constructor) -> Any:
    doc.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        c.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = c.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                doc.problems.append((path, line, f"key {key!r} must be a string"))
                key = str(key)
            if key in out:
                doc.problems.append(
                    (
                        (*path, key),
                        line,
                        f"is set twice (first at line {doc.lines[(*path, key)]})",
                    )
                )
                continue
            doc.lines[(*path, key)] = line
            out[key] = _convert(value_node, (*path, key), doc, c)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*path, i), doc, c) for i, item in enumerate(node.value)]
    return c.construct_object(node, deep=True)
