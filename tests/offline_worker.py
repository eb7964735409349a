"""A recording worker for the offline-read tests (SPEC §9), run as its own process.

``python -m tests.offline_worker URL SNAPSHOT JOURNAL [--key KEY]`` opens the query
snapshot, records the worker's edits into the journal with the database at ``URL``
(unreachable, in the tests) and prints a JSON line: what it read and how many statements
it answered from the snapshot. The same :func:`work` runs directly against a database in
the tests, as the run the replayed journal is compared with.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sqlalchemy import create_engine, select
from sqlalchemy.orm import selectinload

from orm_ext import JournalingSession, SnapshotMissError
from tests.models import Asset, AssetVersion, Component, ComponentLocation

ASSET = "bc0040_comp"


def read(session: JournalingSession) -> Asset:
    """The worker's reads: the asset with its versions (eager), their tasks (lazy)."""
    asset = session.scalars(
        select(Asset).where(Asset.name == ASSET).options(selectinload(Asset.versions))
    ).one()
    for version in asset.versions:
        _ = version.task, version.components
    return asset


def work(session: JournalingSession) -> dict[str, Any]:
    """The worker's edits: review the latest version, add the next one with a component."""
    asset = read(session)
    previous = asset.versions[-1]
    previous.comment = "reviewed offline"
    version = AssetVersion(asset=asset, task=previous.task, version=previous.version + 1)
    component = Component(name="main", version=version)
    ComponentLocation(resource_identifier="/path/to/final/file", component=component)
    session.add(version)
    session.flush()
    version.is_published = True
    return {
        "asset": asset.name,
        "versions": [v.version for v in asset.versions],
        "task": None if previous.task is None else previous.task.name,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.offline_worker")
    parser.add_argument("url")
    parser.add_argument("snapshot")
    parser.add_argument("journal")
    parser.add_argument("--key")
    args = parser.parse_args(argv)
    engine = create_engine(args.url)
    with JournalingSession(engine, journal_key=args.key) as session:
        try:
            with session.reusing_query_results(snapshot=args.snapshot) as memo:
                with session.deferred_operations(args.journal) as ops:
                    seen = work(session)
        except SnapshotMissError as err:
            print(json.dumps({"miss": err.sql}))
            return 3
    print(json.dumps({**seen, "snapshot_hits": memo.snapshot_hits, "operations": ops.operations}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
