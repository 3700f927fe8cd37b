"""The YAML loader of configs: YAML 1.2 numbers and booleans, hostile documents refused.

Duplicate keys, documents nested past MAX_CONFIG_NESTING levels, texts over
MAX_CONFIG_BYTES and aliases that expand past MAX_CONFIG_NODES values ("billion
laughs") are errors, raised before any of them can take long.
"""
from __future__ import annotations

import re
from typing import Any

import yaml

from latentbeam.errors import ConfigError
from latentbeam.text import echo

# A config is a few hundred bytes; these bounds only stop hostile or broken input.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 100_000  # values after alias expansion
MAX_CONFIG_NESTING = 64  # levels of [ { or indentation; PyYAML recurses per level


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 numbers and booleans.

    PyYAML follows YAML 1.1, where `learning_rate: 1e-3` is the string "1e-3" and
    `label: yes` / `name: on` are booleans; here 1e-3 is a number and only
    true/false are booleans, so a column named `yes` or `no` stays a string.
    """


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"))
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _construct_mapping(loader: _YamlLoader, node, deep: bool = False):
    """SafeLoader's mapping, refusing a key given twice (YAML keeps the last silently)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` merges; its keys may be overridden on purpose
            key = loader.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # an unhashable key: SafeLoader refuses it below
            # By key, not by line: `train: {epochs: 1, epochs: 5}` repeats on one line.
            first = seen.setdefault(key, key_node.start_mark.line + 1)
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {echo(key, 40)} (first given on line {first})",
                    key_node.start_mark)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_YamlLoader.construct_mapping = _construct_mapping


def _check_size(obj: Any) -> None:
    """Refuses a document whose values, aliases expanded, exceed MAX_CONFIG_NODES.

    Aliases are shared references after loading; every later traversal (merging, the
    training config copied into bundle.json) expands them, so 9 levels of 10 aliases
    ("billion laughs") would take forever. The walk stops at the budget.
    """
    budget = MAX_CONFIG_NODES
    stack = [obj]
    while stack:
        item = stack.pop()
        budget -= 1
        if budget < 0:
            raise ConfigError(f"The config expands to more than {MAX_CONFIG_NODES} values "
                              f"(YAML aliases repeated inside each other?). Write the values "
                              f"out; a training config needs a few dozen.")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def _nesting(text: str) -> int:
    """An upper bound of the nesting depth: open flow brackets, or indentation / 2."""
    depth = deepest = 0
    for c in text:
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth = max(depth - 1, 0)
    indent = max((len(line) - len(line.lstrip(" ")) for line in text.splitlines()), default=0)
    return max(deepest, indent // 2)


def load_yaml(text: str) -> Any:
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"YAML text of {len(text)} characters; a config is at most "
                          f"{MAX_CONFIG_BYTES} (a few hundred bytes is typical).")
    if _nesting(text) > MAX_CONFIG_NESTING:
        # Checked before parsing: PyYAML recurses per level, and unwinding a RecursionError
        # from thousands of levels takes seconds.
        raise ConfigError(f"YAML nested more than {MAX_CONFIG_NESTING} levels deep; a config "
                          f"has at most a few levels.")
    try:
        obj = yaml.load(text, Loader=_YamlLoader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError as e:
        raise ConfigError("YAML nested too deeply; a config has at most a few levels.") from e
    _check_size(obj)
    return obj
