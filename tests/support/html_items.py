"""An HTML document as a flat list of what it says, for comparing renders in tests."""

from __future__ import annotations

from html.parser import HTMLParser


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.items: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.items.append(f"<{tag}>")
        self.items += [value or "" for _, value in attrs]

    def handle_endtag(self, tag: str) -> None:
        self.items.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        self.items.append(data)

    def handle_comment(self, data: str) -> None:
        self.items.append(f"<!--{data}-->")


def html_items(text: str) -> list[str]:
    """Tags (``"<p>"``, ``"</p>"``), attribute values, texts and comments, in document order,
    entities decoded: two documents with the same list have the same structure and data."""
    collector = _Collector()
    collector.feed(text)
    collector.close()
    return collector.items
