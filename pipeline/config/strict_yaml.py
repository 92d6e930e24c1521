"""YAML for run configs: the safe loader, plus three refusals a config file never needs.

- A key twice in one mapping: PyYAML keeps the last silently, so a second `sft:` section would
  replace the first whole. Refused with the key and its line (merge keys `<<:` still override).
- Aliases that expand to more than `MAX_VALUES` values: a "billion laughs" file of a few hundred
  bytes expands to ~10^9 values and hangs validation. The node graph is measured (shared aliases
  counted once per use) before anything is built.
- Nesting deeper than the parser's recursion allows (`[[[[...`): refused instead of a RecursionError.
"""

import yaml

__all__ = ["MAX_VALUES", "load_strict"]

MAX_VALUES = 100_000  # the demo config expands to ~200 values; no real config comes near this


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: SafeConstructor reports it below
                continue
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"found the key {key!r} twice (first on line {first.start_mark.line + 1}); a duplicate "
                    f"would silently replace the first", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _expanded_values(node: yaml.Node, limit: int, memo: dict[int, int], open_nodes: set[int]) -> int:
    """How many values `node` becomes once every alias is expanded (stops counting past `limit`)."""
    if id(node) in memo:
        return memo[id(node)]
    if id(node) in open_nodes:
        raise yaml.YAMLError(f"a recursive alias (an anchor used inside itself) at {node.start_mark}")
    open_nodes.add(id(node))
    total = 1
    children = node.value if isinstance(node, yaml.SequenceNode) else (
        [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
    for child in children:
        total += _expanded_values(child, limit, memo, open_nodes)
        if total > limit:
            raise yaml.YAMLError(f"aliases expand to more than {limit:,} values (an alias bomb?)")
    open_nodes.discard(id(node))
    memo[id(node)] = total
    return total


def load_strict(text: str, max_values: int = MAX_VALUES):
    """Parse one YAML document like `yaml.safe_load`, with the refusals in the module docstring.

    Raises:
        yaml.YAMLError: not valid YAML, a duplicate key, an alias bomb or too deep a nesting.
    """
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_values(node, max_values, {}, set())
        return loader.construct_document(node)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None
    finally:
        loader.dispose()
