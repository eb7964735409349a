"""The replay service's curve: journals/s and operations/s for 1, 2, 4 and 8 replayers.

Issue 18 (SPEC §10.2: "throughput rising with replayers until the database saturates").
For each journal size (``--sizes``, default 100 and 10,000 operations: families of one
``Parent`` and nine ``Child`` rows) the journals are recorded once, before any clock
starts. Then for each replayer count k (``--replayers``, default 1,2,4,8), on empty
tables and an empty ledger of ``--url`` (PostgreSQL):

* service: k ``orm-journal replay URL SPOOL --watch`` processes share one spool. Once all
  of them are watching, the journals are dropped in (one rename each) and the clock runs
  until every journal is in ``applied/``;
* plain: k processes, each with the same rows for its share of the journals built
  beforehand, write them with a plain ``Session`` (``add_all`` + ``commit()`` per
  journal's worth), started together; the clock runs until the last one is done.

The ratio is service / plain throughput at the same k. While each side runs, the
script samples what PostgreSQL's backends wait on (``pg_stat_activity.wait_event``:
none = on CPU, ``WALSync``/``WALWrite`` = fsync, ``Lock``/``LWLock`` = locks such as the
ledger's, ``ClientRead`` = waiting for the client), counts WAL fsyncs (``pg_stat_wal``)
and the CPU the machine, the database's backends and the clients used (``/proc``).

Run: ``python bench/replay_service_bench.py [--url URL] [--n 160] [--large-n 16]``;
a smoke run: ``--n 8 --large-n 2 --sizes 100,1000 --replayers 1,2``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from _common import Base, Workload, make_engine, record, reset_tables, sqlite_url
from sqlalchemy.orm import Session

from orm_ext import ledger

BENCH = Path(__file__).resolve().parent
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/bench"
CHILDREN = 9  # a family is 10 operations


@dataclass
class Run:
    """What one side did at one replayer count."""

    seconds: float
    journals: int
    operations: int
    waits: Counter[str] = field(default_factory=Counter)
    wal_syncs: int = 0
    machine_cpu: float = 0.0  # share of all cores busy during the run, 0..1
    postgres_cpu: float = 0.0  # CPU seconds of PostgreSQL processes / wall seconds
    client_cpu: float = 0.0  # CPU seconds of the replayers (or plain writers) / wall seconds

    @property
    def journals_per_s(self) -> float:
        return self.journals / self.seconds

    @property
    def operations_per_s(self) -> float:
        return self.operations / self.seconds


# -- measuring the machine and the database ------------------------------------------------


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _cpu_of(pids: Sequence[int]) -> float:
    """CPU seconds used so far by the processes ``pids``."""
    ticks = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2 :].split()
        ticks += int(rest[11]) + int(rest[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class Sampler:
    """Every 20 ms, what the benchmark database's backends wait on and the CPU they used.

    Only this database's backends: the server may be serving other work. A backend's
    CPU time is read from /proc (the server runs on this machine), from its value when
    sampling began (0 for a backend that started later) to its last sample.
    """

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.waits: Counter[str] = Counter()
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def backend_cpu(self) -> float:
        return sum(cpu - self._first.get(pid, 0.0) for pid, cpu in self._last.items())

    def _sample(self, conn: sa.Connection) -> None:
        rows = conn.execute(
            sa.text(
                "SELECT pid, state, coalesce(wait_event_type || ':' || wait_event, 'CPU') "
                "FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
            )
        ).all()
        conn.rollback()
        for pid, state, event in rows:
            if state == "active":
                self.waits[event] += 1
            self._last[pid] = _cpu_of([pid]) or self._last.get(pid, 0.0)

    def _run(self) -> None:
        with self.engine.connect() as conn:
            while not self._stop.wait(0.02):
                self._sample(conn)

    def __enter__(self) -> Sampler:
        with self.engine.connect() as conn:
            self._sample(conn)
        self._first = dict(self._last)
        self.waits.clear()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _wal_syncs(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(sa.text("SELECT wal_sync FROM pg_stat_wal")) or 0)


def measured(engine: sa.Engine, body: Callable[[], tuple[float, int, int, float]]) -> Run:
    """Run ``body() -> (seconds, journals, operations, client CPU seconds)`` and what the
    machine did meanwhile."""
    busy0, total0 = _machine_busy()
    wal0 = _wal_syncs(engine)
    with Sampler(engine) as sampler:
        seconds, journals, operations, client = body()
    busy1, total1 = _machine_busy()
    time.sleep(0.5)  # the statistics of backends that just ended reach pg_stat_wal
    return Run(
        seconds,
        journals,
        operations,
        waits=sampler.waits,
        wal_syncs=_wal_syncs(engine) - wal0,
        machine_cpu=(busy1 - busy0) / max(1, total1 - total0),
        postgres_cpu=sampler.backend_cpu / seconds,
        client_cpu=client / seconds,
    )


# -- the two sides -------------------------------------------------------------------------


def record_journals(families: int, count: int, folder: Path, tmp: Path) -> list[Path]:
    """``count`` journals of ``families`` families each, recorded with a scratch SQLite."""
    engine = sa.create_engine(sqlite_url(tmp / "recording.sqlite"))
    Base.metadata.create_all(engine)
    workload = Workload(parents=families, children=CHILDREN, checkpoint=10 * families)
    paths = []
    for i in range(count):
        path = folder / f"{i:05d}.dbm"
        record(engine, path, workload.object_chunks())
        paths.append(path)
    engine.dispose()
    return paths


def reset(engine: sa.Engine) -> None:
    reset_tables(engine)
    ledger.ensure_ledger(engine)
    with engine.begin() as conn:
        conn.execute(sa.delete(ledger.ledger_table))


def service_side(url: str, journals: list[Path], operations: int, k: int, tmp: Path) -> Run:
    spool = Path(tempfile.mkdtemp(dir=tmp, prefix="spool-"))
    staged = Path(tempfile.mkdtemp(dir=tmp, prefix="staged-"))
    for path in journals:
        shutil.copy(path, staged / path.name)
    logs = [spool.parent / f"{spool.name}-{i}.err" for i in range(k)]
    procs = []
    for log in logs:
        with open(log, "wb") as err:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "orm_ext.cli", "--log-level", "INFO", "replay", url,
                     str(spool), "--watch", "--models", "_common", "--poll-interval", "0.05"],
                    cwd=BENCH,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            )  # fmt: skip
    try:
        while not all("replaying the journals of" in log.read_text() for log in logs):
            if any(p.poll() is not None for p in procs):
                raise SystemExit(f"a replayer ended early:\n{logs[0].read_text()}")
            time.sleep(0.05)

        def body() -> tuple[float, int, int, float]:
            pids = [p.pid for p in procs]
            cpu0 = _cpu_of(pids)
            start = time.perf_counter()
            for path in sorted(staged.iterdir()):
                os.rename(path, spool / path.name)
            applied = spool / "applied"
            while len(list(applied.glob("*.dbm"))) < len(journals):
                if list((spool / "failed").glob("*.json")):
                    raise SystemExit(f"a journal failed: {logs[0].read_text()[-2000:]}")
                time.sleep(0.005)
            seconds = time.perf_counter() - start
            client = _cpu_of(pids) - cpu0
            # Stopped inside the measurement: a backend reports its WAL statistics when
            # its client leaves, and an idle one only seconds later.
            stop(procs)
            return seconds, len(journals), operations, client

        run = measured(make_engine(url), body)
    finally:
        stop(procs)
    busy = sum(log.read_text().count("busy (another replayer") for log in logs)
    run.waits["(service: advisory lock busy)"] = busy
    return run


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait()


def plain_side(url: str, families: int, count: int, k: int) -> Run:
    shares = [len(range(i, count, k)) for i in range(k)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(Path(__file__)), "--plain-worker", url, str(families), str(n)],
            cwd=BENCH,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in shares
        if n
    ]
    for proc in procs:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit("a plain worker did not start")

    def body() -> tuple[float, int, int, float]:
        start = time.perf_counter()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        client = sum(float(proc.communicate()[0]) for proc in procs)
        seconds = time.perf_counter() - start
        return seconds, count, count * families * (1 + CHILDREN), client

    return measured(make_engine(url), body)


def plain_worker(url: str, families: int, journals: int) -> None:
    """Write ``journals`` journals' worth of rows, one commit each, once told to go."""
    engine = sa.create_engine(url)
    workload = Workload(parents=families, children=CHILDREN, checkpoint=10 * families)
    chunks = [list(workload.object_chunks()) for _ in range(journals)]
    with engine.connect():
        pass  # connected before the clock, as the replayers are
    print("ready", flush=True)
    sys.stdin.readline()
    cpu = time.process_time()
    with Session(engine) as session:
        for chunk in chunks:
            for objects in chunk:
                session.add_all(objects)
            session.commit()
    print(time.process_time() - cpu, flush=True)
    engine.dispose()


# -- the report ----------------------------------------------------------------------------


def waits_text(run: Run) -> str:
    total = sum(v for k, v in run.waits.items() if not k.startswith("(")) or 1
    top = [
        f"{event} {100 * n / total:.0f}%"
        for event, n in run.waits.most_common()
        if not event.startswith("(")
    ][:4]
    return ", ".join(top) or "-"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("ORM_JOURNAL_BENCH_URL", DEFAULT_URL))
    parser.add_argument("--n", type=int, default=160, help="journals of the small size")
    parser.add_argument("--large-n", type=int, default=16, help="journals of the large size")
    parser.add_argument("--sizes", default="100,10000", help="operations per journal")
    parser.add_argument("--replayers", default="1,2,4,8")
    parser.add_argument("--dir", help="where the temporary files go")
    parser.add_argument("--plain-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain_worker:
        url, families, journals = args.plain_worker
        plain_worker(url, int(families), int(journals))
        return
    if sa.make_url(args.url).get_backend_name() != "postgresql":
        raise SystemExit("--url must name a PostgreSQL database: the curve is measured there")
    sizes = [int(s) for s in args.sizes.split(",")]
    counts = [int(k) for k in args.replayers.split(",")]
    engine = make_engine(args.url)
    print(f"replay service curve on {engine.url.render_as_string(hide_password=True)}, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        tmp = Path(scratch)
        for size in sizes:
            families = max(1, size // (1 + CHILDREN))
            operations_each = families * (1 + CHILDREN)
            count = args.n if size < 1000 else args.large_n
            folder = tmp / f"journals-{size}"
            folder.mkdir()
            started = time.perf_counter()
            journals = record_journals(families, count, folder, tmp)
            print(
                f"\n{count} journals of {operations_each:,} operations "
                f"(recorded in {time.perf_counter() - started:.1f} s, untimed)"
            )
            header = (
                f"  {'k':>2}  {'service j/s':>11}  {'ops/s':>9}  {'plain ops/s':>11}  "
                f"{'ratio':>5}  {'speed-up':>8}  {'cpu':>4}  {'pg cpu':>6}  {'client':>6}  "
                f"{'fsyncs':>6}  {'busy':>4}  service backends waiting on"
            )
            print(header)
            first: float | None = None
            for k in counts:
                reset(engine)
                plain = plain_side(args.url, families, count, k)
                reset(engine)
                ours = service_side(args.url, journals, count * operations_each, k, tmp)
                first = first or ours.operations_per_s
                print(
                    f"  {k:>2}  {ours.journals_per_s:>11.1f}  {ours.operations_per_s:>9,.0f}  "
                    f"{plain.operations_per_s:>11,.0f}  "
                    f"{ours.operations_per_s / plain.operations_per_s:>5.2f}  "
                    f"{ours.operations_per_s / first:>7.2f}x  {100 * ours.machine_cpu:>3.0f}%  "
                    f"{ours.postgres_cpu:>6.2f}  {ours.client_cpu:>6.2f}  {ours.wal_syncs:>6}  "
                    f"{ours.waits['(service: advisory lock busy)']:>4}  {waits_text(ours)}"
                )
                print(
                    f"  {'':>2}  {'(plain)':>11}  {'':>9}  {'':>11}  {'':>5}  {'':>8}  "
                    f"{100 * plain.machine_cpu:>3.0f}%  {plain.postgres_cpu:>6.2f}  "
                    f"{plain.client_cpu:>6.2f}  "
                    f"{plain.wal_syncs:>6}  {'':>4}  {waits_text(plain)}"
                )
    engine.dispose()
    print(
        "\nratio: service / plain operations per second at the same process count;\n"
        "speed-up: against 1 replayer; cpu: share of all CPUs busy (other work included);\n"
        "pg cpu / client: CPU seconds per second of the database's backends / of the\n"
        "replayers (or plain writers); fsyncs: WAL syncs of the whole server (pg_stat_wal);\n"
        "busy: journals a replayer found locked by another (advisory lock); waiting on:\n"
        "sampled pg_stat_activity wait events of the database's backends."
    )


if __name__ == "__main__":
    main()
