"""The agent's action protocol, pure: the JSON schema a model must fill to choose its next action (sent as
`response_format: {"type": "json_schema"}`, so vLLM's structured output makes even a 270M base model emit a valid
call, shared/facts.md), and the validation of what came back. A reply is either one tool call with arguments
that match the tool's parameter schema, or a final answer; anything else is Malformed with a reason the repair
prompt quotes back to the model. Native OpenAI `tool_calls` in a reply are accepted too (a server with a tool
parser returns those instead of content)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

__all__ = ["FINAL", "ToolSchema", "Action", "Malformed", "action_schema", "answer_schema", "parse_action",
           "validate_arguments", "response_format"]

FINAL = "final_answer"
MAX_ACTION_CHARS = 16_000


@dataclass(frozen=True)
class ToolSchema:
    name: str
    description: str
    parameters: Mapping[str, Any]

    def openai(self) -> dict[str, Any]:
        """The OpenAI `tools` entry (shown to the model in the system prompt)."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": dict(self.parameters)}}


@dataclass(frozen=True)
class Action:
    tool: str  # a tool name or FINAL
    arguments: Mapping[str, Any]
    answer: str = ""

    @property
    def is_final(self) -> bool:
        return self.tool == FINAL


@dataclass(frozen=True)
class Malformed:
    reason: str


def action_schema(tools: Sequence[ToolSchema]) -> dict[str, Any]:
    """One object per choice (anyOf), each pinning `action` with a one-value enum and carrying that tool's own
    parameter schema, so guided decoding can only produce calls the tools accept."""
    choices: list[dict[str, Any]] = [
        {"type": "object", "properties": {"action": {"type": "string", "enum": [t.name]},
                                          "arguments": dict(t.parameters)},
         "required": ["action", "arguments"], "additionalProperties": False}
        for t in tools
    ]
    choices.append(answer_schema())
    return {"anyOf": choices} if len(choices) > 1 else choices[0]


MAX_ANSWER_CHARS = 1200  # ~300 tokens: the grammar closes the JSON before the step's max_tokens cuts it off


def answer_schema() -> dict[str, Any]:
    return {"type": "object", "properties": {"action": {"type": "string", "enum": [FINAL]},
                                             "answer": {"type": "string", "minLength": 1,
                                                        "maxLength": MAX_ANSWER_CHARS}},
            "required": ["action", "answer"], "additionalProperties": False}


def response_format(schema: Mapping[str, Any], name: str = "next_action") -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": dict(schema), "strict": True}}


_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "number": (int, float),
                                       "boolean": (bool,), "object": (dict,), "array": (list,)}


def validate_arguments(value: Any, schema: Mapping[str, Any], path: str = "arguments") -> str | None:
    """The first violation of the schema subset tools use (type, properties, required, enum, items,
    additionalProperties, minLength, maxItems), or None."""
    want = schema.get("type")
    if want is not None:
        kinds = _TYPES.get(want, (object,))
        if not isinstance(value, kinds) or (want in ("integer", "number") and isinstance(value, bool)):
            return f"{path} must be of type {want}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{path} must be one of {list(schema['enum'])}"
    if isinstance(value, str) and len(value) < int(schema.get("minLength", 0)):
        return f"{path} must not be empty"
    if isinstance(value, str) and "maxLength" in schema and len(value) > int(schema["maxLength"]):
        return f"{path} is longer than {schema['maxLength']} characters"
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                return f"{path}.{key} is required"
        for key, item in value.items():
            if key in props:
                problem = validate_arguments(item, props[key], f"{path}.{key}")
                if problem:
                    return problem
            elif schema.get("additionalProperties") is False:
                return f"{path}.{key} is not a known argument"
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > int(schema["maxItems"]):
            return f"{path} has more than {schema['maxItems']} items"
        if "minItems" in schema and len(value) < int(schema["minItems"]):
            return f"{path} needs at least {schema['minItems']} items"
        for i, item in enumerate(value):
            problem = validate_arguments(item, schema.get("items", {}), f"{path}[{i}]")
            if problem:
                return problem
    return None


def _from_tool_calls(tool_calls: Sequence[Mapping[str, Any]]) -> dict[str, Any] | Malformed:
    call = tool_calls[0]
    fn = call.get("function") or {}
    raw = fn.get("arguments") or "{}"
    try:
        args = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        return Malformed(f"the arguments of tool call {fn.get('name')!r} are not valid JSON")
    if fn.get("name") == FINAL:
        return {"action": FINAL, "answer": (args or {}).get("answer", "")}
    return {"action": fn.get("name"), "arguments": args}


def parse_action(text: str | None, tools: Sequence[ToolSchema],
                 tool_calls: Sequence[Mapping[str, Any]] | None = None) -> Action | Malformed:
    if tool_calls:
        obj: Any = _from_tool_calls(tool_calls)
        if isinstance(obj, Malformed):
            return obj
    else:
        body = (text or "").strip()
        if not body:
            return Malformed("the reply was empty; reply with one JSON object")
        if len(body) > MAX_ACTION_CHARS:
            return Malformed(f"the reply is longer than {MAX_ACTION_CHARS} characters")
        if body.startswith("```"):  # a fenced block: the JSON inside it
            body = body.strip("`").removeprefix("json").strip()
        try:
            obj = json.loads(body)
        except json.JSONDecodeError:
            return Malformed("the reply is not a JSON object")
    if not isinstance(obj, dict):
        return Malformed("the reply is JSON but not an object")
    name = obj.get("action")
    if name == FINAL:
        answer = obj.get("answer")
        if not isinstance(answer, str) or not answer.strip():
            return Malformed("final_answer needs a non-empty string `answer`")
        return Action(FINAL, {}, answer.strip())
    by_name = {t.name: t for t in tools}
    if name not in by_name:
        known = ", ".join([*by_name, FINAL])
        return Malformed(f"`action` must be one of: {known}")
    args = obj.get("arguments", {})
    problem = validate_arguments(args, by_name[name].parameters)
    if problem:
        return Malformed(f"{name}: {problem}")
    return Action(name, args)
