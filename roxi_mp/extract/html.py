"""HTML pages made into sections: the main text only, with heading paths.

lxml.html (libxml2) parses the page; our own walk then keeps the text a reader of the page
came for and drops what every page of a site repeats or a browser never shows: scripts,
styles, navigation, the site's header and footer, asides, forms, hidden elements. A
main-text extractor (trafilatura and the like) was not used because it may judge a real
paragraph boilerplate and drop it; this walk drops elements by what they are, never by a
guess, and gives heading paths (h1-h6) directly.

Hostile pages: libxml2 stops at 256 levels of nesting (a fatal error that silently cuts
the document short), which we turn into a refusal rather than index half a page; the tag
count is checked before parsing, because an lxml tree costs about 300 bytes an element and
50 MB of tags would need gigabytes. Our walk is iterative (an explicit stack), so no
nesting depth reaches Python's recursion limit.
"""

from __future__ import annotations

import codecs
import re

import lxml.etree
import lxml.html

from . import HTML, ExtractError, Extracted, Section

#: tags ('<' bytes) a page may hold: at most 1M elements, some 450 MB and 5 s at worst
#: (measured: 1M unclosed <p>); a long web page holds under 100,000
MAX_TAGS = 1_000_000
#: nesting libxml2's HTML parser allows (without XML_PARSE_HUGE, which we do not set)
MAX_DEPTH = 256
#: bytes searched for a <meta charset> (the HTML standard's prescan looks at 1024)
CHARSET_PRESCAN = 4096

#: elements never indexed, with all they hold
DROP_TAGS = frozenset({
    "script", "style", "noscript", "template", "svg", "nav", "aside", "footer", "form",
    "button", "select", "textarea", "iframe", "object", "embed", "canvas", "head", "title",
})
#: roles of landmark elements never indexed
DROP_ROLES = frozenset({"navigation", "banner", "contentinfo", "search"})
#: a header is the site's banner only outside these (the HTML standard's rule): inside an
#: article it holds the article's own title, which is kept (a footer never is)
SECTIONING = frozenset({"article", "section", "main"})
#: elements whose start and end break a paragraph
BLOCK_TAGS = frozenset({
    "address", "article", "blockquote", "body", "caption", "center", "dd", "details",
    "dialog", "dir", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer",
    "header", "hgroup", "hr", "html", "legend", "li", "main", "menu", "ol", "p", "pre",
    "section", "summary", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul",
})
HEADING_LEVELS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}

_META_CHARSET = re.compile(
    rb"""<meta[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_XML_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*encoding\s*=\s*["']([A-Za-z0-9_.:-]+)""")
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)


def collapse(text: str) -> str:
    """Whitespace runs made single spaces, soft hyphens dropped."""
    return " ".join(text.replace("\xad", "").split())


class Outline:
    """The path of headings above the current block ("A > B"), as headings arrive with
    their level (a smaller level is an outer heading). Shared with docx.py."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, str]] = []

    def enter(self, level: int, text: str) -> str:
        """A heading of `level` starts; returns its own path (which includes it)."""
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, text))
        return self.path() or text

    def path(self) -> str | None:
        return " > ".join(text for _, text in self._stack) or None


def extract_html(data: bytes) -> Extracted:
    """An HTML page's main text as sections (paragraphs, headings with their paths,
    tables as rows) and its title. Raises ExtractError with a one-line reason."""
    if data.count(b"<") > MAX_TAGS:
        raise ExtractError(f"over {MAX_TAGS:,} tags; too large a page to read")
    document = _parse(_utf8(data))
    head = document.find("head")
    title = collapse(head.findtext("title") or "") if head is not None else ""
    body = document.find("body")
    if body is None:
        raise ExtractError("no text (the page holds only markup)")
    root = _main_part(body)
    flow = _Flow()
    _walk(root, flow)
    if not flow.sections and root is not body:
        # a <main> left empty, to be filled by scripts: the body may still hold the text
        flow = _Flow()
        _walk(body, flow)
    if not flow.sections:
        raise ExtractError("no text (the page holds only markup)")
    return Extracted(HTML, title or flow.first_h1, flow.sections)


def _utf8(data: bytes) -> bytes:
    """The page as UTF-8 bytes: decoded by its BOM, else its <meta charset> (or XML
    declaration), else as UTF-8; bytes that do not decode become U+FFFD."""
    encoding = None
    for bom, name in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
                      (codecs.BOM_UTF16_BE, "utf-16-be")):
        if data.startswith(bom):
            data, encoding = data[len(bom):], name
            break
    if encoding is None:
        head = data[:CHARSET_PRESCAN]
        found = _XML_ENCODING.match(head) or _META_CHARSET.search(head)
        encoding = _codec(found.group(1).decode("ascii")) if found else "utf-8"
    if encoding == "utf-8":
        try:
            data.decode("utf-8")  # valid: parse the bytes as they are, no copy kept
            return data
        except UnicodeDecodeError:
            pass
    return data.decode(encoding, errors="replace").encode("utf-8")


def _codec(label: str) -> str:
    """A Python codec for a charset label; what browsers do for the common mislabels
    (latin-1 and ASCII mean windows-1252; a UTF-16 label on bytes we could read it from
    is wrong: UTF-8); unknown labels: UTF-8."""
    try:
        name = codecs.lookup(label).name
    except LookupError:
        return "utf-8"
    if name in ("latin-1", "iso8859-1", "ascii"):
        return "cp1252"
    if name.startswith("utf-16") or name.startswith("utf-32") or name == "utf-8-sig":
        return "utf-8"
    return name


def _parse(utf8: bytes) -> lxml.html.HtmlElement:
    parser = lxml.html.HTMLParser(encoding="utf-8", remove_comments=True, remove_pis=True)
    try:
        document = lxml.html.document_fromstring(utf8, parser=parser)
    except lxml.etree.ParserError as e:  # "Document is empty"
        raise ExtractError("no text (the page holds only markup)") from e
    except lxml.etree.LxmlError as e:
        raise ExtractError(f"not readable HTML: {_first_line(e)}") from e
    for error in parser.error_log:
        if error.type_name == "ERR_RESOURCE_LIMIT":
            # libxml2 stopped reading here: what it built is only the start of the page
            raise ExtractError(f"tags nested over {MAX_DEPTH} deep; not read")
    return document


def _first_line(error: Exception) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:120]


def _main_part(body: lxml.html.HtmlElement) -> lxml.html.HtmlElement:
    """The <main> element, else the only <article>, else the body (among shown ones)."""
    mains = [e for e in body.iter("main") if _shown(e)]
    if mains:
        return mains[0]
    articles = [e for e in body.iter("article") if _shown(e)]
    return articles[0] if len(articles) == 1 else body


def _shown(element: lxml.html.HtmlElement) -> bool:
    return not _dropped(element) and not any(_dropped(a) for a in element.iterancestors())


def _dropped(element: lxml.html.HtmlElement) -> bool:
    """Whether an element (with all it holds) is left out of the text."""
    tag = element.tag
    if not isinstance(tag, str) or tag in DROP_TAGS:
        return True
    if tag == "header" and not any(
            a.tag in SECTIONING for a in element.iterancestors()):
        return True
    attrib = element.attrib
    if not attrib:
        return False
    if "hidden" in attrib or attrib.get("aria-hidden", "").strip().lower() == "true":
        return True
    role = attrib.get("role")
    if role and not DROP_ROLES.isdisjoint(role.lower().split()):
        return True
    style = attrib.get("style")
    return bool(style and _HIDDEN_STYLE.search(style))


class _Flow:
    """Text as the walk meets it, cut into sections at block boundaries."""

    def __init__(self, *, flat: bool = False) -> None:
        self.flat = flat  # inside a table cell: headings and tables are plain blocks
        self.sections: list[Section] = []
        self.first_h1: str | None = None
        self._parts: list[str] = []
        self._outline = Outline()
        self._heading: lxml.html.HtmlElement | None = None  # the heading being read

    def add(self, text: str | None) -> None:
        if text:
            self._parts.append(text)

    def block_edge(self) -> None:
        """A block starts or ends: the paragraph before it ends (inside a heading, a
        space: "<h2>A<div>B</div></h2>" reads "A B")."""
        if self._heading is not None:
            self._parts.append(" ")
        else:
            self._emit("text")

    def reads_tables(self) -> bool:
        """Tables become table sections (not in a cell, where they are the cell's text,
        nor inside a heading)."""
        return not self.flat and self._heading is None

    def heading_starts(self, element: lxml.html.HtmlElement) -> bool:
        if self.flat or self._heading is not None:
            return False
        self._emit("text")
        self._heading = element
        return True

    def heading_ends(self, element: lxml.html.HtmlElement) -> bool:
        if element is not self._heading:
            return False
        self._heading = None
        self._emit("heading", level=HEADING_LEVELS[element.tag])
        return True

    def table(self, rows: list[str], caption: str) -> None:
        self._emit("text")
        if caption:
            self.sections.append(Section(caption, heading=self._outline.path()))
        if rows:
            self.sections.append(Section("\n".join(rows), heading=self._outline.path(),
                                         kind="table"))

    def finish(self) -> None:
        self._emit("text")

    def _emit(self, kind: str, level: int = 0) -> None:
        if not self._parts:
            return
        text = collapse("".join(self._parts))
        self._parts.clear()
        if not text:
            return
        if kind == "heading":
            self.sections.append(Section(text, heading=self._outline.enter(level, text),
                                         kind="heading"))
            if level == 1 and self.first_h1 is None:
                self.first_h1 = text
        else:
            self.sections.append(Section(text, heading=self._outline.path()))


def _walk(root: lxml.html.HtmlElement, flow: _Flow) -> None:
    """Feed `flow` the text under `root` in document order (not root's tail), without
    recursion: the stack holds (element, entering) pairs."""
    flow.add(root.text)
    stack = [(child, True) for child in reversed(root)]
    while stack:
        element, entering = stack.pop()
        if not entering:
            _leave(element, flow)
            flow.add(element.tail)
            continue
        if _dropped(element):
            flow.add(element.tail)
            continue
        tag = element.tag
        if tag == "table" and flow.reads_tables():
            flow.table(*_table(element))
            flow.add(element.tail)
            continue
        # A heading that opens its own section needs no block edge: heading_starts ended the text before it.
        opens_section = tag in HEADING_LEVELS and flow.heading_starts(element)
        if not opens_section and (tag in BLOCK_TAGS or tag in HEADING_LEVELS):
            flow.block_edge()
        elif tag == "br":
            flow.add(" ")
        flow.add(element.text)
        stack.append((element, False))
        stack.extend((child, True) for child in reversed(element))
    flow.finish()


def _leave(element: lxml.html.HtmlElement, flow: _Flow) -> None:
    tag = element.tag
    if tag in HEADING_LEVELS and flow.heading_ends(element):
        return
    if tag in BLOCK_TAGS or tag in HEADING_LEVELS:
        flow.block_edge()


def _table(table: lxml.html.HtmlElement) -> tuple[list[str], str]:
    """A table's rows ("cell | cell") and caption. A table nested in a cell is read as
    that cell's text."""
    caption = ""
    rows = []
    for child in table:
        if child.tag == "caption":
            caption = _cell_text(child)
        elif child.tag == "tr":
            rows.append(child)
        elif child.tag in ("thead", "tbody", "tfoot"):
            rows.extend(row for row in child if row.tag == "tr")
    lines = []
    for row in rows:
        cells = [_cell_text(cell) for cell in row if cell.tag in ("td", "th")
                 and not _dropped(cell)]
        if any(cells):
            lines.append(" | ".join(cells))
    return lines, caption


def _cell_text(cell: lxml.html.HtmlElement) -> str:
    flow = _Flow(flat=True)
    _walk(cell, flow)
    return " ".join(section.text for section in flow.sections)
