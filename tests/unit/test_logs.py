"""Size-rotated role logs, tail and follow, on real files."""

from __future__ import annotations

from types import SimpleNamespace

from roxi_mp import logs
from roxi_mp.logs import RotatingLog, follow, tail


def test_rotates_by_size_and_keeps_backups(tmp_path):
    path = tmp_path / "embedder-1.log"
    log = RotatingLog(path, max_bytes=100, backups=2)
    for i in range(10):
        log.write(f"line {i:02d} ".encode() + b"x" * 30 + b"\n")  # 39 bytes each
    log.close()
    assert path.stat().st_size <= 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embedder-1.log", "embedder-1.log.1",
                                                          "embedder-1.log.2"]
    assert tail(path, 1) == ["line 09 " + "x" * 30]
    assert tail(path.with_name("embedder-1.log.1"), 1)[0].startswith("line 07")


def test_zero_backups_truncates(tmp_path):
    path = tmp_path / "q.log"
    log = RotatingLog(path, max_bytes=50, backups=0)
    for _ in range(5):
        log.write(b"y" * 30 + b"\n")
    log.close()
    assert [p.name for p in tmp_path.iterdir()] == ["q.log"]
    assert path.stat().st_size == 31


def test_reopen_appends(tmp_path):
    path = tmp_path / "a.log"
    RotatingLog(path).write(b"one\n")
    log = RotatingLog(path)
    log.write(b"two\n")
    log.close()
    assert tail(path, 5) == ["one", "two"]


def test_tail_reads_the_end_of_a_large_file(tmp_path):
    path = tmp_path / "big.log"
    path.write_text("".join(f"{i}\n" for i in range(200_000)))
    assert tail(path, 3) == ["199997", "199998", "199999"]
    assert tail(path, 0) == []
    assert tail(tmp_path / "missing.log", 5) == []


def test_follow_sees_new_lines_across_a_rotation(tmp_path, monkeypatch):
    path = tmp_path / "f.log"
    log = RotatingLog(path, max_bytes=60, backups=1)
    log.write(b"before\n")
    lines = [f"after {i} ----------" for i in range(6)]
    unwritten = iter(lines)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        """follow found nothing new and waits: meanwhile the writer adds the next line. The
        test's own schedule in place of a writer thread and wall-clock sleeps, which a loaded
        machine could run late enough for two rotations to pass between two reads."""
        waits.append(seconds)
        line = next(unwritten, None)
        if line is not None:
            log.write(f"{line}\n".encode())  # 20 bytes: rotates every third line

    monkeypatch.setattr(logs, "time", SimpleNamespace(sleep=sleep))
    seen = list(follow(path, poll=0.02, stop=lambda: len(waits) > len(lines)))
    log.close()
    assert "before" not in seen  # follow starts at the end, like tail -f
    assert seen == lines
    assert set(waits) == {0.02}
