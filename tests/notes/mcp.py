from mcpauth import tool

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
