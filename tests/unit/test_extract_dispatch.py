"""Unit tests of roxi_mp.extract.dispatch: the parser table and its safety net."""

from __future__ import annotations

import sys
import types

import pytest

from roxi_mp.config import ExtractSettings
from roxi_mp.extract import DOCX, HTML, PDF, TEXT, Extracted, ExtractError, Section
from roxi_mp.extract import dispatch

SETTINGS = ExtractSettings(max_pages=7, max_unzipped_bytes=12345)


@pytest.fixture
def fake_parsers(monkeypatch):
    """Stand-in parser modules (the real ones are other helpers' files): each records its call."""
    calls = []

    def module(name: str, func: str):
        def parse(data, **kwargs):
            calls.append((func, data, kwargs))
            return Extracted(content_type=name, title=None, sections=[Section("words")])
        mod = types.ModuleType(f"roxi_mp.extract.{name}")
        setattr(mod, func, parse)
        monkeypatch.setitem(sys.modules, f"roxi_mp.extract.{name}", mod)

    module("pdf", "extract_pdf")
    module("html", "extract_html")
    module("docx", "extract_docx")
    return calls


def test_each_type_goes_to_its_parser_with_its_limits(fake_parsers) -> None:
    assert dispatch.extract_bytes(b"P", PDF, SETTINGS).content_type == "pdf"
    assert dispatch.extract_bytes(b"H", HTML, SETTINGS).content_type == "html"
    assert dispatch.extract_bytes(b"D", DOCX, SETTINGS).content_type == "docx"
    assert fake_parsers == [("extract_pdf", b"P", {"max_pages": 7}), ("extract_html", b"H", {}),
                            ("extract_docx", b"D", {"max_unzipped_bytes": 12345})]


def test_a_type_with_no_parser_is_an_extract_error() -> None:
    with pytest.raises(ExtractError, match="^no extractor for text$"):
        dispatch.extract_bytes(b"x", TEXT, SETTINGS)
    with pytest.raises(ExtractError, match="^no extractor for image/png$"):
        dispatch.extract_bytes(b"x", "image/png", SETTINGS)


@pytest.mark.parametrize("sections", [[], [Section("  \n ")], [Section(""), Section("\t", kind="heading")]])
def test_a_document_with_no_text_is_refused(monkeypatch, sections) -> None:
    monkeypatch.setitem(dispatch.PARSERS, "test/empty", lambda data, s: Extracted("test/empty", "T", sections))
    with pytest.raises(ExtractError, match="^no text found$"):
        dispatch.extract_bytes(b"x", "test/empty", SETTINGS)

