"""The tool zoo: one tool per kind of thing a FastMCP tool can take, return or raise; and
resources, resource templates and prompts of every kind FastMCP serves.

Every function here is an ordinary function (``@tool`` returns it unchanged), so the
differential test serves the very same functions from plain FastMCP and compares the replies.
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anyio
from fastmcp import Context
from fastmcp.exceptions import PromptError, ResourceError, ToolError
from fastmcp.prompts import Message, PromptResult
from fastmcp.resources import ResourceContent, ResourceResult
from fastmcp.server.dependencies import get_access_token
from fastmcp.tools.base import ToolResult
from fastmcp.utilities.types import Image
from mcp_types import (
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    InputRequiredResult,
    TextContent,
)
from pydantic import BaseModel

from mcpauth import current_principal, prompt, resource, tool
from tests.zoo.models import Exhibit

READ = ["zoo.view_exhibit"]
WRITE = ["zoo.add_exhibit"]
FIXED_ID = uuid.UUID("6d0b1c4e-1f0a-4d8e-9a57-0c1a2b3c4d5e")
FIXED_TIME = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
FEE = Decimal("12.50")
#: A 1x1 transparent PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGBgAAAABQABpfZFQAAAAABJRU5ErkJggg=="
)


class Animal(BaseModel):
    name: str
    legs: int = 4
    tags: list[str] = []


@dataclass
class Enclosure:
    id: uuid.UUID
    opened: datetime
    fee: Decimal
    animals: list[str]


class Unserializable:
    """Pydantic cannot serialize this: a result holding one fails after the body ran."""


@tool(permissions=READ, read_only=True)
def zoo_dict(name: str) -> dict[str, Any]:
    """A dict with UUID, datetime and Decimal values."""
    return {"name": name, "id": FIXED_ID, "at": FIXED_TIME, "fee": FEE, "nested": {"ok": True}}


@tool(permissions=READ, read_only=True)
async def zoo_list(count: int) -> list[dict[str, Any]]:
    """An async tool returning a list (a bare array the SDK must get wrapped)."""
    return [{"n": i, "id": uuid.UUID(int=i)} for i in range(count)]


@tool(permissions=READ, read_only=True)
def zoo_str(text: str, times: int = 2) -> str:
    return text * times


@tool(permissions=READ, read_only=True)
async def zoo_int(a: int, b: int) -> int:
    return a + b


@tool(permissions=READ, read_only=True)
def zoo_none() -> None:
    return None


@tool(permissions=READ, read_only=True)
def zoo_dataclass(animals: list[str]) -> Enclosure:
    """A dataclass result from a list argument."""
    return Enclosure(id=FIXED_ID, opened=FIXED_TIME, fee=FEE, animals=animals)


@tool(permissions=READ, read_only=True)
async def zoo_pydantic(animal: Animal) -> Animal:
    """A pydantic model in and out."""
    return Animal(name=animal.name.upper(), legs=animal.legs, tags=[*animal.tags, "seen"])


@tool(permissions=READ, read_only=True)
def zoo_models(animals: list[Animal], min_legs: int = 0) -> list[Animal]:
    """A list of models in, a filtered list out."""
    return [a for a in animals if a.legs >= min_legs]


@tool(permissions=READ, read_only=True, idempotent=True)
def zoo_scores(scores: dict[str, int]) -> int:
    """A dict argument: its keys are data."""
    return sum(scores.values())


@tool(permissions=READ, read_only=True)
def zoo_tool_result(label: str) -> ToolResult:
    """A ToolResult built by hand: its own content and structured content."""
    return ToolResult(
        content=[TextContent(type="text", text=f"custom {label}")],
        structured_content={"label": label, "id": str(FIXED_ID)},
    )


@tool(permissions=READ, read_only=True)
def zoo_image() -> Image:
    return Image(data=PNG, format="png")


@tool(permissions=READ, read_only=True, description="Logs and reports progress via Context.")
async def zoo_context(steps: int, ctx: Context) -> dict[str, Any]:
    await ctx.info(f"starting {steps} steps")
    for i in range(steps):
        await ctx.report_progress(i + 1, steps, f"step {i + 1}")
    await ctx.debug("done")
    return {"steps": steps, "request_id": bool(ctx.request_id)}


def _ask(key: str, message: str) -> dict[str, ElicitRequest]:
    schema = {"type": "object", "properties": {"value": {"type": "string"}}, "required": ["value"]}
    return {
        key: ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))
    }


def _answer(response: Any) -> str:
    assert isinstance(response, ElicitResult)
    return f"{response.action}:{(response.content or {}).get('value')}"


@tool(permissions=READ, read_only=True)
async def zoo_confirm(item: str, ctx: Context) -> str | InputRequiredResult:
    """Asks the client for input (MCP 2026-07-28, FastMCP's guard pattern), then answers."""
    if ctx.input_responses is None:
        return InputRequiredResult(
            input_requests=_ask("confirm", f"Feed the {item}?"), request_state=f"asked:{item}"
        )
    return f"{_answer(ctx.input_responses['confirm'])} after {ctx.request_state}"


@tool(permissions=READ, read_only=True)
def zoo_survey(topic: str, ctx: Context) -> dict[str, Any] | InputRequiredResult:
    """A sync guard tool asking twice, carrying the first answer in its own request state."""
    responses = ctx.input_responses or {}
    if "name" in responses and ctx.request_state is None:
        first = _answer(responses["name"])
        return InputRequiredResult(
            input_requests=_ask("age", f"{topic}: and your age?"), request_state=first
        )
    if "age" in responses:
        return {"topic": topic, "name": ctx.request_state, "age": _answer(responses["age"])}
    return InputRequiredResult(input_requests=_ask("name", f"{topic}: your name?"))


@tool(permissions=WRITE)
def zoo_adopt(label: str, ctx: Context) -> dict[str, Any] | InputRequiredResult:
    """A sync write that asks first: only the confirmed round writes (in its transaction)."""
    if ctx.input_responses is None:
        return InputRequiredResult(input_requests=_ask("sure", f"Adopt {label}?"))
    answer = _answer(ctx.input_responses["sure"])
    if answer != "accept:yes":
        return {"label": label, "adopted": False}
    Exhibit.objects.create(label=label)
    return {"label": label, "adopted": True}


@tool(permissions=WRITE)
async def zoo_slow(seconds: float, ctx: Context, label: str = "") -> dict[str, Any]:
    """Reports progress every 0.1 s for ``seconds``, then writes ``label`` if given: a call a
    client can give up on (cancelled, it never writes)."""
    steps = max(1, int(seconds * 10))
    for i in range(steps):
        await ctx.report_progress(i + 1, steps)
        await anyio.sleep(0.1)
    if label:
        await Exhibit.objects.acreate(label=label)
    return {"slept": seconds}


@tool(permissions=READ, read_only=True)
async def zoo_notify_then_fail(ctx: Context) -> str:
    """Reports progress twice, then fails unexpectedly (its text never reaches the client)."""
    await ctx.report_progress(1, 3)
    await ctx.report_progress(2, 3)
    raise RuntimeError("secret internal detail")


@tool(permissions=READ, read_only=True)
async def zoo_which_worker(ctx: Context) -> dict[str, int] | InputRequiredResult:
    """Governed only: which worker process asked for input, and which one got the answer."""
    if ctx.input_responses is None:
        return InputRequiredResult(
            input_requests=_ask("go", "Go on?"), request_state=str(os.getpid())
        )
    return {"asked_by": int(ctx.request_state or 0), "answered_by": os.getpid()}


@tool(permissions=WRITE)
def zoo_slow_write(label: str, seconds: float) -> dict[str, Any]:
    """A sync write that takes ``seconds`` (a thread is not interrupted: it runs to its end)."""
    time.sleep(seconds)
    Exhibit.objects.create(label=label)
    return {"label": label}


@tool(permissions=READ, read_only=True)
def zoo_tool_error(reason: str) -> str:
    """Raises ToolError: a tool error whose message the client sees."""
    raise ToolError(f"the keeper says no: {reason}")


@tool(permissions=READ, read_only=True)
async def zoo_explode() -> str:
    """Raises an unexpected exception: its text must never reach the client."""
    raise RuntimeError("secret internal detail")


@tool(permissions=WRITE)
def zoo_write(label: str) -> dict[str, Any]:
    """Writes an exhibit and returns it."""
    exhibit = Exhibit.objects.create(label=label)
    return {"label": exhibit.label, "saved": exhibit.pk is not None}


@tool(permissions=WRITE)
def zoo_write_then_unserializable(label: str) -> dict[str, Any]:
    """Writes, then returns what cannot be serialized: the write must roll back."""
    Exhibit.objects.create(label=label)
    return {"label": label, "oops": Unserializable()}


@tool(permissions=WRITE)
async def zoo_async_write_then_unserializable(label: str) -> dict[str, Any]:
    """The async twin: there is no async transaction, so its write stays (documented)."""
    await Exhibit.objects.acreate(label=label)
    return {"label": label, "oops": Unserializable()}


@tool(permissions=READ, read_only=True)
async def zoo_access_token() -> dict[str, Any]:
    """Governed only: the caller as FastMCP sees it (``get_access_token()``, the SDK's user)."""
    token = get_access_token()
    assert token is not None
    return {
        "token": token.token,
        "client_id": token.client_id,
        "subject": token.subject,
        "scopes": token.scopes,
        "claims": token.claims,
    }


@tool(permissions=READ, read_only=True)
async def zoo_whoami() -> dict[str, Any]:
    """Governed only: the caller, from current_principal() inside an async tool."""
    p = current_principal()
    return {"client_id": p.client_id, "tenant": p.tenant.external_id, "subject": p.subject}


# --- resources and resource templates --------------------------------------------------------


@resource("zoo://info", permissions=READ, description="A static text resource.")
def zoo_info() -> str:
    return "The zoo opens at nine."


@resource("zoo://stats", permissions=READ, mime_type="application/json")
async def zoo_stats() -> dict[str, Any]:
    """An async resource returning JSON."""
    return {"animals": 3, "keepers": ["ana", "bo"], "open": True}


@resource("zoo://logo.png", permissions=READ, mime_type="image/png", name="zoo_logo")
def zoo_logo() -> bytes:
    """A binary resource: a blob."""
    return PNG


@resource("zoo://multi", permissions=READ)
def zoo_multi() -> ResourceResult:
    """A ResourceResult with several contents and result meta."""
    return ResourceResult(
        [ResourceContent("plain"), ResourceContent({"k": 1}), ResourceContent(b"\x00\x01")],
        meta={"count": 3},
    )


@resource("zoo://animals/{name}/legs/{count}", permissions=READ, mime_type="application/json")
def zoo_animal(name: str, count: int) -> dict[str, Any]:
    """A sync template: its path parameters, one converted to int."""
    return {"name": name, "legs": count, "double": count * 2}


@resource("zoo://search{?q,limit}", permissions=READ, mime_type="application/json")
async def zoo_search(q: str = "", limit: int = 2) -> list[str]:
    """An async template with query parameters."""
    return [f"{q}-{i}" for i in range(limit)]


@resource("zoo://keeper/{name}", permissions=READ)
async def zoo_keeper(name: str, ctx: Context) -> str:
    """A template that gets Context injected."""
    await ctx.info(f"looking up {name}")
    return f"keeper {name}"


@resource("zoo://closed/{area}", permissions=READ)
def zoo_closed(area: str) -> str:
    """Raises ResourceError: an error whose message the client sees."""
    raise ResourceError(f"the {area} is closed")


@resource("zoo://explode", permissions=READ)
async def zoo_resource_explode() -> str:
    """Raises an unexpected exception: its text must never reach the client."""
    raise RuntimeError("secret internal detail")


@resource("zoo://write/{label}", permissions=WRITE)
def zoo_resource_write_then_unserializable(label: str) -> Any:
    """Writes, then returns what FastMCP cannot convert: the write must roll back."""
    Exhibit.objects.create(label=label)
    return Unserializable()


@resource("zoo://whoami", permissions=READ, mime_type="application/json")
def zoo_resource_whoami() -> dict[str, Any]:
    """Governed only: the caller, from current_principal() inside a sync resource."""
    p = current_principal()
    return {"client_id": p.client_id, "tenant": p.tenant.external_id}


# --- prompts -------------------------------------------------------------------------------------


@prompt(permissions=READ)
def zoo_greeting(name: str) -> str:
    """A sync prompt: one user message."""
    return f"Please greet {name}, our newest visitor."


@prompt(permissions=READ, description="An async prompt with a converted argument.")
async def zoo_conversation(topic: str, turns: int = 2) -> list[Message]:
    return [
        Message(f"Tell me about {topic} (turn {i + 1})" if i % 2 == 0 else f"{topic}!", role=role)
        for i, role in enumerate(["user", "assistant"] * turns)
    ]


@prompt(permissions=READ, name="zoo_prompt_result")
def zoo_full_prompt(animal: Animal) -> PromptResult:
    """A PromptResult from a JSON-encoded model argument."""
    return PromptResult(
        [Message({"name": animal.name, "legs": animal.legs}), Message("Noted.", role="assistant")],
        description=f"about {animal.name}",
    )


@prompt(permissions=READ)
def zoo_prompt_error(reason: str) -> str:
    """Raises PromptError: an error whose message the client sees."""
    raise PromptError(f"no prompt today: {reason}")


@prompt(permissions=WRITE)
def zoo_keepers_only() -> str:
    """Needs the write permission: hidden from read-only callers."""
    return "For keepers only."
