import pytest
from hypothesis import given
from hypothesis import strategies as st

from speedrun.chat.calculator import MAX_CHARS, CalculatorError, evaluate


@pytest.mark.parametrize("expression, result", [
    ("482+137", "619"), ("482 - 137", "345"), ("137-482", "-345"), ("2+3*4", "14"), ("(2+3)*4", "20"),
    ("2*3+4", "10"), ("10-4-3", "3"), ("10-(4-3)", "9"), ("100/10/5", "2"), ("-3", "-3"), ("--3", "3"),
    ("+3", "3"), ("2*-3", "-6"), ("-(2+3)*2", "-10"), ("3--2", "5"), ("10/4", "2.5"), ("6/3", "2"),
    ("1/3", "0.3333333333"), ("2/3", "0.6666666667"), ("-2/3", "-0.6666666667"), ("0.1+0.2", "0.3"),
    (".5+1.25", "1.75"), ("1.50*2", "3"), ("7.", "7"), ("  ( 1 + 2 )  ", "3"), ("0-0", "0"),
    ("12345678901234567890*98765432109876543210", str(12345678901234567890 * 98765432109876543210)),
    ("123456789.123456", "123456789.1"), ("1/8", "0.125"), ("(" * 99 + "1" + ")" * 99, "1"),
])
def test_evaluate(expression, result):
    assert evaluate(expression) == result


@pytest.mark.parametrize("expression", [
    "__import__('os')", "1**1000000", "2**3", "7//2", "7%2", "a+1", "print(1)", "1;2", "(1", "1)", "()",
    "1/0", "1/(2-2)", "", "   ", "1+", "*2", "1 2", "1.2.3", "1e5", "\u0663+1", "2^3", "x", "[1]", "1,000",
    "9" * 101, "9" * 60 + "*" + "9" * 60, "99999*" * 33 + "9", "1+" * 100 + "1", "0." + "0" * 100 + "1",
])
def test_refuses(expression):
    with pytest.raises(CalculatorError) as error:
        evaluate(expression)
    assert "\n" not in str(error.value)


def test_limits():
    assert len("1+" * 100 + "1") > MAX_CHARS
    with pytest.raises(CalculatorError, match="over the limit"):
        evaluate("1" + " " * MAX_CHARS)
    with pytest.raises(CalculatorError, match="more than 100 digits"):
        evaluate("99999*" * 33 + "9")
    assert isinstance(CalculatorError("x"), ValueError)


PRECEDENCE = {"+": 1, "-": 1, "*": 2}
trees = st.recursive(st.integers(-999, 999), lambda sub: st.tuples(st.sampled_from("+-*"), sub, sub),
                     max_leaves=12)


def value(tree) -> int:
    if isinstance(tree, int):
        return tree
    op, left, right = tree
    a, b = value(left), value(right)
    return a + b if op == "+" else a - b if op == "-" else a * b


def render(tree, sep: str, all_parens: bool) -> str:
    """The tree as text, with parentheses only where precedence needs them (or everywhere)."""
    if isinstance(tree, int):
        return str(tree)
    op, left, right = tree

    def side(child, is_right: bool) -> str:
        text = render(child, sep, all_parens)
        if isinstance(child, tuple) and (all_parens or PRECEDENCE[child[0]] < PRECEDENCE[op]
                                         or (is_right and PRECEDENCE[child[0]] == PRECEDENCE[op] and op == "-")):
            return f"({text})"
        return text

    return f"{side(left, False)}{sep}{op}{sep}{side(right, True)}"


@given(trees, st.sampled_from(["", " "]), st.booleans())
def test_matches_integer_arithmetic(tree, sep, all_parens):
    assert evaluate(render(tree, sep, all_parens)) == str(value(tree))
