"""Files that change, through the real system (issue 17, acceptance 5): re-ingesting a
changed file replaces its old version, a renamed file keeps no stale copy under its old
key, `--sync` deletes the documents whose files vanished, and `roxi rm` deletes by key.
The hashing backend embeds, so a query naming a section's word finds that section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from roxi_mp import errors
from roxi_mp.store import Store

from ..conftest import PATIENCE, wait_until
from .test_pipeline import roxi

pytestmark = pytest.mark.integration


def section(name: str) -> str:
    """A Markdown section whose every sentence names `name`: about one 50-word chunk."""
    return f"# {name}\n\n" + " ".join(f"{name} point{i}." for i in range(22)) + "\n"


def settled(cfg) -> bool:
    """Every chunk indexed and no replacement waiting."""
    with Store(cfg.db_path) as store:
        s = store.stats()
    return s.chunks == s.indexed and not s.pending and not s.leased and not s.replacing


def hits(s, text: str, k: int = 10) -> list[dict]:
    with s.query_client(timeout=30) as client:
        return client.query(text, k=k)


def keys_of(found: list[dict]) -> set[str]:
    return {h["key"] for h in found}


def ingest(cfg, *args: str) -> dict:
    result = roxi(cfg, "ingest", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_changed_renamed_vanished_and_removed_files(system, make_config, tmp_path: Path) -> None:
    cfg = make_config(store__chunk_words=50, store__chunk_overlap=10)
    s = system(cfg)
    docs = tmp_path / "docs"
    docs.mkdir()
    gout, lupus, ra, pso = docs / "gout.md", docs / "lupus.md", docs / "ra.txt", docs / "psoriasis.md"
    gout.write_text(section("urate") + "\n" + section("colchicine") + "\n" + section("allopurinol"))
    lupus.write_text(section("lupus"))
    ra.write_text(section("rheumatoid"))
    pso.write_text(section("psoriasis"))
    assert ingest(cfg, str(docs))["added"] == 4
    wait_until(lambda: settled(cfg), timeout=PATIENCE, what="the first versions indexed")
    assert "allopurinol" in hits(s, "allopurinol")[0]["text"]
    key = str(gout.resolve())

    # A changed file replaces its old version; its unchanged chunks reuse their vectors.
    gout.write_text(section("urate") + "\n" + section("colchicine") + "\n" + section("febuxostat"))
    report = ingest(cfg, str(docs))
    assert (report["replaced"], report["unchanged"]) == (1, 3) and report["reused"] >= 1
    wait_until(lambda: settled(cfg), timeout=PATIENCE, what="the new version indexed and live")
    assert all("allopurinol" not in h["text"] for h in hits(s, "allopurinol")), "v1 text answered after v2"
    found = wait_until(lambda: [h for h in hits(s, "febuxostat") if "febuxostat" in h["text"]],
                       timeout=PATIENCE, what="the new text answering")
    assert found[0]["key"] == key and found[0]["version"] == 2
    assert {h["version"] for h in hits(s, "urate colchicine", k=20) if h["key"] == key} == {2}
    with Store(cfg.db_path) as store:
        assert store.stats().reused >= 1 and store.dead_rows() >= 1

    # A renamed file keeps no copy under its old key.
    sle = docs / "sle.md"
    lupus.rename(sle)
    assert ingest(cfg, "--sync", str(docs))["removed_keys"] == [str(lupus.resolve())]
    wait_until(lambda: settled(cfg), timeout=PATIENCE, what="the renamed file indexed")
    assert str(lupus.resolve()) not in keys_of(hits(s, "lupus"))
    assert wait_until(lambda: str(sle.resolve()) in keys_of(hits(s, "lupus")), timeout=PATIENCE,
                      what="the renamed file answering")

    # A file deleted, then ingest --sync: its document is gone.
    ra.unlink()
    assert ingest(cfg, "--sync", str(docs))["removed_keys"] == [str(ra.resolve())]
    assert str(ra.resolve()) not in keys_of(hits(s, "rheumatoid"))

    # roxi rm by path: gone once it returns; an unknown key exits 5.
    assert str(pso.resolve()) in keys_of(hits(s, "psoriasis"))
    removed = roxi(cfg, "rm", str(pso), "no-such-key")
    assert removed.returncode == errors.BAD_INPUT and removed.stdout == f"removed {pso.resolve()}\n"
    assert str(pso.resolve()) not in keys_of(hits(s, "psoriasis"))
    listed = json.loads(roxi(cfg, "docs", "--json").stdout)["documents"]
    assert [(Path(d["key"]).name, d["status"], d["version"]) for d in listed] == [("gout.md", "live", 2),
                                                                                  ("sle.md", "live", 1)]
