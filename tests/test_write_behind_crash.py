"""Write-behind survives SIGKILL anywhere: every acknowledged entry applied exactly once.

A child process submits (inserts of keys, then an increment of each key) and
flushes; it is killed with SIGKILL at random moments, and also right when it
is inside a batch's database commit or between that commit and the journal
ack; then a new child takes over the same journal. After the last kill a
child drains the journal. The database must then hold every key whose insert
``submit`` acknowledged exactly once, with ``n == 1`` for every key whose
increment was acknowledged, and no key twice or incremented twice.

``QC_CRASH_KILLS`` (default 50) sets the kills per combination; CI runs the
default, a long profile e.g. ``QC_CRASH_KILLS=500``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from tests.dbcount import poll
from tests.wb_crash_child import log, md

REPO = Path(__file__).resolve().parents[1]
KILLS = int(os.environ.get("QC_CRASH_KILLS", "50"))


class Zygote:
    """The fork server of :mod:`tests.wb_crash_child`."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.wb_crash_child"],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def spawn(self, cfg: dict) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("spawn " + json.dumps(cfg) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _marks_since(path: Path, offset: int) -> bytes:
    if not path.exists():
        return b""
    with path.open("rb") as f:
        f.seek(offset)
        return f.read()


def _last_mark(path: Path) -> bytes:
    data = path.read_bytes() if path.exists() else b""
    return data[-1:]


@pytest.mark.parametrize("journal_kind", ["sqlite", "redis"])
@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_sigkill_anywhere_applies_every_acknowledged_entry_once(
    db, journal_kind, zygote, fast_dir, request
):
    tmp_path = fast_dir
    if db == "sqlite":
        url = f"sqlite:///{tmp_path / 'target.sqlite'}"
    else:
        url = request.getfixturevalue("pg_url")
    plain = create_engine(url)
    md.create_all(plain)
    if journal_kind == "sqlite":
        journal = f"sqlite:///{tmp_path / 'journal.db'}"
    else:
        journal = request.getfixturevalue("redis_server").url
    queue = f"crash_{db}_{tmp_path.name}"
    files = {n: str(tmp_path / n) for n in ("marks", "acks", "errors", "done")}
    base = {"db": url, "journal": journal, "queue": queue, "namespace": "crash", **files}
    rng = random.Random(f"{db}-{journal_kind}")
    marks = Path(files["marks"])
    landed: Counter[bytes] = Counter()
    for i in range(KILLS):
        pid = zygote.spawn({**base, "mode": "work", "start": i * 100_000})
        if i % 3 != 0:  # aim: inside a batch's database commit, or after it, before the ack
            before = marks.stat().st_size if marks.exists() else 0
            target = b"C" if i % 3 == 1 else b"D"
            poll(
                lambda b=before, t=target: (
                    b"A" in _marks_since(marks, b) and _last_mark(marks) == t
                ),
                timeout=20,
                interval=0.0002,
                what="a batch commit",
            )
        else:
            time.sleep(rng.uniform(0.005, 0.08))  # a random moment (not synchronisation)
        os.kill(pid, signal.SIGKILL)
        poll(lambda p=pid: not _alive(p), timeout=10, what="the child died")
        landed[_last_mark(marks)] += 1
        assert not Path(files["errors"]).exists(), Path(files["errors"]).read_text()
    zygote.spawn({**base, "mode": "drain", "start": 0})
    poll(
        lambda: Path(files["done"]).exists() or Path(files["errors"]).exists(),
        timeout=120,
        what="the drain",
    )
    assert not Path(files["errors"]).exists(), Path(files["errors"]).read_text()

    status = json.loads(
        subprocess.run(
            [
                *(sys.executable, "-m", "querycache.cli", "queue", "status", "--json"),
                *("--journal", journal, "--namespace", "crash", "--queue", queue),
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert status["pending"] == 0 and status["dead_letters"] == [], status

    acked_inserts, acked_updates = set(), set()
    for line in Path(files["acks"]).read_text().splitlines():
        if len(line) == 10:
            (acked_inserts if line[0] == "I" else acked_updates).add(int(line[1:]))
    with plain.connect() as c:
        rows = c.execute(select(log.c.k, func.count(), func.sum(log.c.n)).group_by(log.c.k)).all()
    plain.dispose()
    counts = {k: n for k, n, _ in rows}
    incremented = {k: int(s) for k, _, s in rows}
    assert all(n == 1 for n in counts.values()), "an entry was applied twice"
    assert all(s <= 1 for s in incremented.values()), "an increment was applied twice"
    assert acked_inserts <= set(counts), "an acknowledged insert was lost"
    assert all(incremented[k] == 1 for k in acked_updates), "an acknowledged update was lost"
    assert len(acked_updates) > KILLS  # the children did real work between kills
    # kills inside a commit, and between the database commit and the journal ack
    assert landed[b"C"] >= KILLS // 10 and landed[b"D"] >= KILLS // 10, landed
