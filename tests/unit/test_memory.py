"""Deep sleep's last step: letting go of the clean pages of the shared libraries (issue 22)."""

from __future__ import annotations

import subprocess
import sys

from roxi_mp.memory import clean_file_mappings, drop_file_pages

SMAPS = """\
7f0000000000-7f0000002000 r--p 00000000 08:01 11 /venv/lib/libfaiss.so
Rss:                   8 kB
Anonymous:             0 kB
7f0000002000-7f0000006000 r-xp 00002000 08:01 11 /venv/lib/libfaiss.so
Size:                 16 kB
Rss:                  12 kB
Anonymous:             0 kB
7f0000006000-7f0000007000 r--p 00006000 08:01 11 /venv/lib/libfaiss.so
Rss:                   4 kB
Anonymous:             4 kB
7f0000007000-7f0000008000 rw-p 00007000 08:01 11 /venv/lib/libfaiss.so
Rss:                   4 kB
Anonymous:             4 kB
7f0000008000-7f0000009000 r--p 00000000 00:00 0 
Rss:                   4 kB
Anonymous:             4 kB
7f0000009000-7f000000a000 r--p 00000000 00:00 0 [vvar]
Rss:                   4 kB
Anonymous:             0 kB
7f000000a000-7f000000c000 r--s 00000000 08:01 12 /data/vectors.faiss (deleted)
Rss:                   0 kB
Anonymous:             0 kB
"""


def test_only_read_only_file_mappings_without_a_written_page_are_chosen():
    chosen = clean_file_mappings(SMAPS)
    # the code and the read-only data as in the file; not the relocated read-only segment
    # (written before it was protected), not the writable one, not anonymous memory, not
    # [vvar], and not a mapping with nothing resident
    assert chosen == [(0x7F0000000000, 0x7F0000002000, 8192), (0x7F0000002000, 0x7F0000006000, 12288)]


def test_a_process_lets_go_of_its_libraries_pages_and_runs_on():
    """In a fresh interpreter with numpy loaded: RSS goes down by what was let go of, and
    numpy still computes (its code comes back by minor faults)."""
    script = (
        "import numpy as np\n"
        "from roxi_mp.memory import drop_file_pages\n"
        "def rss(): return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) * 1024\n"
        "a = np.arange(100000, dtype=np.float64); a.sum()\n"
        "before = rss(); dropped = drop_file_pages(); after = rss()\n"
        "assert float((a * 2).sum()) == 2 * float(a.sum())\n"
        "print(before, dropped, after)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    before, dropped, after = map(int, done.stdout.split())
    assert dropped > 1 << 20 and after < before - (1 << 20), (before, dropped, after)


def test_dropping_in_this_process_is_harmless():
    assert drop_file_pages() >= 0
    assert sorted([3, 1, 2]) == [1, 2, 3]  # the interpreter's own code refaults as needed
