"""The action protocol and the calculator, pure: what a model reply parses to, and what arithmetic is allowed."""

import json

import pytest

from agentfleet.runtime.actions import FINAL, Action, Malformed, action_schema, parse_action, validate_arguments
from agentfleet.runtime.agent import delegate_schema
from agentfleet.runtime.tools import CALCULATOR, RETRIEVE, CalculatorError, calculate

TOOLS = [RETRIEVE, CALCULATOR]


@pytest.mark.parametrize("text, tool_calls, want", [
    ('{"action": "final_answer", "answer": "25 days [1]"}', None, Action(FINAL, {}, "25 days [1]")),
    ('  {"action": "retrieve", "arguments": {"query": "vacation"}}\n', None, Action("retrieve", {"query": "vacation"})),
    ('```json\n{"action": "calculator", "arguments": {"expression": "1+1"}}\n```', None,
     Action("calculator", {"expression": "1+1"})),
    (None, [{"function": {"name": "calculator", "arguments": '{"expression": "2*3"}'}}],
     Action("calculator", {"expression": "2*3"})),
    (None, [{"function": {"name": "final_answer", "arguments": '{"answer": "done"}'}}], Action(FINAL, {}, "done")),
    ("The rest is silence.", None, Malformed("the reply is not a JSON object")),
    ("", None, Malformed("the reply was empty; reply with one JSON object")),
    ("[1, 2]", None, Malformed("the reply is JSON but not an object")),
    ('{"action": "shell", "arguments": {"cmd": "rm -rf /"}}', None,
     Malformed("`action` must be one of: retrieve, calculator, final_answer")),
    ('{"action": "retrieve", "arguments": {}}', None, Malformed("retrieve: arguments.query is required")),
    ('{"action": "retrieve", "arguments": {"query": 7}}', None,
     Malformed("retrieve: arguments.query must be of type string")),
    # A model cannot smuggle a principal into the search: retrieve takes only `query`.
    ('{"action": "retrieve", "arguments": {"query": "x", "tenant": "globex"}}', None,
     Malformed("retrieve: arguments.tenant is not a known argument")),
    ('{"action": "final_answer", "answer": "  "}', None, Malformed("final_answer needs a non-empty string `answer`")),
    (None, [{"function": {"name": "calculator", "arguments": "{not json"}}],
     Malformed("the arguments of tool call 'calculator' are not valid JSON")),
], ids=["final", "tool", "fenced", "native-tool-call", "native-final", "prose", "empty", "array", "unknown-tool",
        "missing-arg", "wrong-type", "extra-arg-tenant", "blank-answer", "native-bad-json"])
def test_parse_action(text, tool_calls, want):
    assert parse_action(text, TOOLS, tool_calls) == want


def test_action_schema_pins_each_tool_and_final():
    schema = action_schema(TOOLS)
    names = [c["properties"]["action"]["enum"] for c in schema["anyOf"]]
    assert names == [["retrieve"], ["calculator"], [FINAL]]
    assert schema["anyOf"][0]["properties"]["arguments"] == RETRIEVE.parameters
    assert all(c["additionalProperties"] is False for c in schema["anyOf"])
    json.dumps(schema)  # serialisable as a response_format


def test_delegate_schema_bounds_parallel_calls_and_names():
    from agentfleet.api.agentapp import SubAgent

    subs = {"hr": SubAgent(name="hr", description="HR questions", system_prompt="p")}
    d = delegate_schema(subs, 2)
    ok = {"calls": [{"agent": "hr", "task": "a"}, {"agent": "hr", "task": "b"}]}
    assert validate_arguments(ok, d.parameters) is None
    assert validate_arguments({"calls": ok["calls"] * 2}, d.parameters) == "arguments.calls has more than 2 items"
    assert validate_arguments({"calls": [{"agent": "ceo", "task": "a"}]}, d.parameters) == \
        "arguments.calls[0].agent must be one of ['hr']"


@pytest.mark.parametrize("expr, want", [
    ("6*7", 42), ("(25 - 5) * 2 / 4", 10), ("2 ** 10", 1024), ("2^3", 8), ("sqrt(16)", 4), ("-3 + abs(-2)", -1),
    ("7 // 2 + 7 % 2", 4), ("round(2.567, 2)", 2.57), ("max(1, 5, 3)", 5), ("pi * 0", 0), ("0.1 + 0.2", 0.1 + 0.2),
], ids=["mul", "parens-div", "pow", "caret-pow", "sqrt", "unary-abs", "floordiv-mod", "round", "max", "const",
        "float"])
def test_calculator_values(expr, want):
    assert calculate(expr) == want


@pytest.mark.parametrize("expr, message", [
    ("__import__('os').system('id')", "unsupported syntax: Call"),
    ("open('/etc/passwd')", "unsupported syntax: Call"),
    ("(1).__class__", "unsupported syntax: Attribute"),
    ("x + 1", "unsupported syntax: Name"),
    ("9 ** 9 ** 9", "the exponent is too large"),
    ("1 / 0", "division by zero"),
    ("'a' * 3", "only numbers are allowed"),
    ("[1, 2]", "unsupported syntax: List"),
    ("lambda: 1", "unsupported syntax: Lambda"),
    ("1 +", "not an arithmetic expression"),
    ("1" * 600, "the expression is longer than 500 characters"),
    ("sqrt(-1)", "sqrt: math domain error"),
    ("10.0 ** 300 * 10.0 ** 300", "the result is out of range"),
], ids=["import", "open", "dunder", "name", "pow-tower", "div0", "string", "list", "lambda", "syntax", "too-long",
        "domain", "overflow"])
def test_calculator_refuses(expr, message):
    with pytest.raises(CalculatorError) as e:
        calculate(expr)
    assert str(e.value) == message
