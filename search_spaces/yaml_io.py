"""YAML reading with two PyYAML surprises fixed: exponent floats and silently repeated keys."""

from __future__ import annotations

import re
from typing import Any

import yaml


class SpaceLoader(yaml.SafeLoader):
    """SafeLoader that reads 1e-4 as a number and remembers duplicate keys.

    PyYAML follows YAML 1.1, where a float needs a dot: `2e-4` would arrive as the string "2e-4",
    the most natural way to write a learning rate. And it keeps the last of two equal keys silently.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[Any, int]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = self.construct_object(key_node)
                if key in seen:
                    self.duplicates.append((key, key_node.start_mark.line + 1))
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


SpaceLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
