"""``{{ value|visible }}`` and ``{{ value|visible_text }}``: identifiers shown so that
look-alikes cannot pass for each other (see :mod:`audit.display`)."""

from __future__ import annotations

from django import template
from django.utils.safestring import SafeString

from audit import display

register = template.Library()


@register.filter(is_safe=True)
def visible(value: object) -> SafeString:
    """HTML: printable ASCII as is, every other character escaped in a marked span."""
    return display.visible(value)


@register.filter
def visible_text(value: object) -> str:
    """Plain text (for attributes and ``<option>``): non-ASCII characters escaped."""
    return display.visible_text(value)
