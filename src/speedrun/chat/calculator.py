"""The chat model's calculator: + - * / and parentheses on exact numbers.

Expressions come from a model or from whoever types into the web UI, so this
never calls eval: a tokenizer and a recursive-descent parser compute over
Fractions, which keeps integers exact (10/4 is 2.5, 6/3 is 2, big sums do not
round). Limits on the input's length and on the size of every number keep any
expression cheap, so a tool call cannot hang the server.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, localcontext
from fractions import Fraction

# The length limit also bounds the parser's recursion (at most 100 nested parentheses).
MAX_CHARS = 200
MAX_DIGITS = 100  # for every number: the literals, the intermediate values and the result
SIGNIFICANT_DIGITS = 10  # of a result that is not a whole number
_LIMIT = 10 ** MAX_DIGITS
_TOKEN = re.compile(r"\s*(?:([0-9]+(?:\.[0-9]*)?|\.[0-9]+)|(\S))")
_HINT = "use numbers, + - * / and parentheses, like (12+3)*4"


class CalculatorError(ValueError):
    """An expression the calculator does not accept."""


def evaluate(expression: str) -> str:
    """The value of an arithmetic expression: an integer when it is whole, else a decimal."""
    if len(expression) > MAX_CHARS:
        raise CalculatorError(f"the expression is {len(expression)} characters, over the limit of {MAX_CHARS}; "
                              "split it into smaller calculations")
    if not expression.strip():
        raise CalculatorError(f"the expression is empty; {_HINT}")
    return _format(_Parser(expression).parse())


class _Parser:
    """expr := term (('+'|'-') term)*   term := unary (('*'|'/') unary)*
    unary := ('+'|'-')* atom            atom := number | '(' expr ')'"""

    def __init__(self, expression: str):
        # (character number, number text or None, symbol); the symbol "" ends the input.
        self.tokens = []
        for m in _TOKEN.finditer(expression):
            if m[2] and m[2] not in "+-*/()":
                raise CalculatorError(f"unsupported character {m[2]!r} at character {m.start(2) + 1}; {_HINT}")
            self.tokens.append((m.start(m.lastindex) + 1, m[1], m[2]))
        self.tokens.append((len(expression) + 1, None, ""))
        self.i = 0

    def parse(self) -> Fraction:
        value = self.expr()
        if self.symbol() != "":
            raise self.error("an operator")
        return value

    def symbol(self) -> str | None:
        return self.tokens[self.i][2]

    def error(self, expected: str) -> CalculatorError:
        where, number, symbol = self.tokens[self.i]
        found = repr(number or symbol) if number or symbol else "the end"
        return CalculatorError(f"expected {expected} at character {where} but found {found}; {_HINT}")

    def expr(self) -> Fraction:
        value = self.term()
        while self.symbol() in ("+", "-"):
            op = self.symbol()
            self.i += 1
            right = self.term()
            value = _checked(value + right if op == "+" else value - right)
        return value

    def term(self) -> Fraction:
        value = self.unary()
        while self.symbol() in ("*", "/"):
            op = self.symbol()
            self.i += 1
            right = self.unary()
            if op == "/" and right == 0:
                raise CalculatorError("division by zero; check the divisor")
            value = _checked(value * right if op == "*" else value / right)
        return value

    def unary(self) -> Fraction:
        negative = False
        while self.symbol() in ("+", "-"):
            negative ^= self.symbol() == "-"
            self.i += 1
        value = self.atom()
        return -value if negative else value

    def atom(self) -> Fraction:
        _, number, symbol = self.tokens[self.i]
        if number is not None:
            self.i += 1
            return _checked(Fraction(number))
        if symbol != "(":
            raise self.error("a number or '('")
        self.i += 1
        value = self.expr()
        if self.symbol() != ")":
            raise self.error("')'")
        self.i += 1
        return value


def _checked(value: Fraction) -> Fraction:
    if abs(value.numerator) >= _LIMIT or value.denominator >= _LIMIT:
        raise CalculatorError(f"a number in this calculation has more than {MAX_DIGITS} digits; "
                              "use smaller numbers")
    return value


def _format(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    whole_digits = len(str(abs(value.numerator) // value.denominator))
    with localcontext() as context:
        # Ten significant digits, or every digit of a larger whole part; 2.5 rounds up as people expect.
        context.prec, context.rounding = max(SIGNIFICANT_DIGITS, whole_digits), ROUND_HALF_UP
        text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
