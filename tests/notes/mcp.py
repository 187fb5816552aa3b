from mcpauth import prompt, resource, tool

from .models import Note


@tool(permissions=["notes.add_note"])
def add_note(text: str) -> dict:
    """Save a note for your organisation."""
    note = Note.objects.current().create(text=text)
    return {"id": note.pk, "text": note.text}


@tool(permissions=["notes.view_note"], read_only=True)
async def search_notes(query: str, limit: int = 20) -> list[dict]:
    """Find your organisation's notes containing `query`, newest first."""
    notes = Note.objects.current().filter(text__icontains=query).order_by("-created_at")
    return [n async for n in notes.values("id", "text")[:limit]]


@resource("notes://recent", permissions=["notes.view_note"], mime_type="application/json")
async def recent_notes() -> list[dict]:
    """Your organisation's ten newest notes."""
    notes = Note.objects.current().order_by("-created_at")
    return [n async for n in notes.values("id", "text")[:10]]


@resource("notes://{note_id}", permissions=["notes.view_note"], mime_type="application/json")
def note(note_id: int) -> list[dict]:
    """One of your organisation's notes (an empty list if there is no such note)."""
    return list(Note.objects.current().filter(pk=note_id).values("id", "text"))


@prompt(permissions=["notes.view_note"])
def summarize_notes(topic: str) -> str:
    """Ask for a summary of your organisation's notes about `topic`."""
    return f"Read notes://recent and summarize what they say about {topic}."
