"""Deploy order from ``needs`` (pure): levels of releases, each level after the
ones it needs; the releases of one level do not need each other and may deploy
in parallel. A cycle is an error naming its whole path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class CycleError(ValueError):
    """``cycle`` is the path, first release repeated at the end: a -> b -> a."""

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = tuple(cycle)
        if len(self.cycle) == 2:
            text = f"release {self.cycle[0]!r} needs itself"
        else:
            text = "releases need each other in a cycle: " + " -> ".join(self.cycle)
        super().__init__(text)


def levels(needs: Mapping[str, Sequence[str]]) -> tuple[tuple[str, ...], ...]:
    """``needs`` is ``{release: [releases it needs]}`` in declaration order; every
    name it mentions is a key. The levels keep declaration order inside each."""
    order = list(needs)
    position = {name: i for i, name in enumerate(order)}
    _check_cycles(needs, order)
    level: dict[str, int] = {}

    def depth(name: str) -> int:
        if name not in level:
            level[name] = 1 + max((depth(n) for n in needs[name]), default=-1)
        return level[name]

    for name in order:
        depth(name)
    out: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for name in order:
        out[level[name]].append(name)
    return tuple(tuple(sorted(lv, key=position.__getitem__)) for lv in out)


def _check_cycles(needs: Mapping[str, Sequence[str]], order: Sequence[str]) -> None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for n in needs[name]:
            if state.get(n) == 1:
                raise CycleError([*path[path.index(n) :], n])
            if n not in state:
                visit(n)
        path.pop()
        state[name] = 2

    for name in order:
        if name not in state:
            visit(name)
