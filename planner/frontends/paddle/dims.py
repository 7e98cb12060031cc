"""Symbolic tensor dimensions as Paddle's PIR shape analysis prints them.

`infer_symbolic_shape_pass` annotates every op with `sym_shape_str`, e.g.
``shape[S0, 4, S1, Broadcast(S1, Max(Min(S1, S1), 0))], data[NULL]``. A
dimension is an integer, a symbol (S0, S1, ...) or a function of dimensions
(Add, Mul, Max, Min, Broadcast, a leading "-" or "1 / "). This module parses
those strings and evaluates them once the symbols are bound (batch -> 1,
sequence -> the planned length).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_TOKEN = re.compile(r"\s*(?:(?P<int>-?\d+)|(?P<name>[A-Za-z_][A-Za-z_0-9]*)|(?P<punct>[(),/-]))")
FUNCTIONS = ("Add", "Mul", "Max", "Min", "Broadcast")


@dataclass(frozen=True, slots=True)
class Dim:
    """One dimension: `op` is "int", "sym", "neg", "recip" or one of FUNCTIONS; `args` its operands."""

    op: str
    value: int = 0
    name: str = ""
    args: tuple = ()

    def __post_init__(self) -> None:
        if self.op not in ("int", "sym", "neg", "recip") + FUNCTIONS:
            raise ValueError(f"dimension op {self.op!r} is not one of int, sym, neg, recip, {', '.join(FUNCTIONS)}")

    def symbols(self) -> frozenset[str]:
        if self.op == "sym":
            return frozenset((self.name,))
        out: frozenset[str] = frozenset()
        for arg in self.args:
            out |= arg.symbols()
        return out

    def evaluate(self, env: dict[str, int]) -> float:
        """The value with symbols bound by `env`; KeyError names an unbound symbol."""
        if self.op == "int":
            return self.value
        if self.op == "sym":
            return env[self.name]
        values = [a.evaluate(env) for a in self.args]
        if self.op == "neg":
            return -values[0]
        if self.op == "recip":
            return 1.0 / values[0]
        if self.op == "Add":
            return sum(values)
        if self.op == "Mul":
            return math.prod(values)
        if self.op == "Min":
            return min(values)
        # Max, and Broadcast: the broadcast of a size-1 dim with n is n
        return max(values)

    def __str__(self) -> str:
        if self.op == "int":
            return str(self.value)
        if self.op == "sym":
            return self.name
        if self.op == "neg":
            return f"-{self.args[0]}"
        if self.op == "recip":
            return f"1 / {self.args[0]}"
        return f"{self.op}({', '.join(str(a) for a in self.args)})"


def constant(value: int) -> Dim:
    return Dim("int", value=int(value))


def symbol(name: str) -> Dim:
    return Dim("sym", name=name)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = self._tokenize(text)
        self.pos = 0

    def _tokenize(self, text: str) -> list[tuple[str, str]]:
        out, i = [], 0
        while i < len(text):
            if text[i].isspace():
                i += 1
                continue
            match = _TOKEN.match(text, i)
            if not match or match.end() == i:
                raise ValueError(f"cannot parse dimension {text!r} at {text[i:]!r}")
            kind = match.lastgroup
            out.append((kind, match.group(kind)))
            i = match.end()
        return out

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (expected is not None and token[1] != expected):
            raise ValueError(f"cannot parse dimension {self.text!r}: expected {expected or 'more'}, got {token}")
        self.pos += 1
        return token

    def dim(self) -> Dim:
        kind, text = self.take()
        if kind == "int":
            if self.peek() == ("punct", "/"):  # "1 / x"
                self.take("/")
                return Dim("recip", args=(self.dim(),))
            return constant(int(text))
        if kind == "punct" and text == "-":
            return Dim("neg", args=(self.dim(),))
        if kind == "name" and self.peek() == ("punct", "("):
            if text not in FUNCTIONS:
                raise ValueError(f"dimension {self.text!r}: unknown function {text!r}; known: {', '.join(FUNCTIONS)}")
            self.take("(")
            args = [self.dim()]
            while self.peek() == ("punct", ","):
                self.take(",")
                args.append(self.dim())
            self.take(")")
            return Dim(text, args=tuple(args))
        if kind == "name":
            return symbol(text)
        raise ValueError(f"cannot parse dimension {self.text!r} at token {text!r}")


def parse_dim(text: str) -> Dim:
    """One dimension from its printed form."""
    parser = _Parser(text)
    out = parser.dim()
    if parser.peek() is not None:
        raise ValueError(f"cannot parse dimension {text!r}: trailing {parser.tokens[parser.pos:]}")
    return out


_SHAPE = re.compile(r"shape\[([^\[\]]*)\]")


def parse_sym_shapes(text: str) -> list[tuple[Dim, ...]]:
    """The shapes in a `sym_shape_str` attribute, one per tensor result, in order."""
    out = []
    for body in _SHAPE.findall(text):
        out.append(tuple(parse_dim(part) for part in _split_top(body)) if body.strip() else ())
    return out


def _split_top(body: str) -> list[str]:
    """Split "a, F(b, c), d" on top-level commas."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    return [p.strip() for p in parts]
