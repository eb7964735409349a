"""An experiment-tracking store in the style of MLflow's ``SqlAlchemyStore``.

Every store method runs in the request's session and commits at its end (MLflow's
``ManagedSessionMaker``). ``create_experiment`` saves the experiment, queries it back by
name for its id and derives the artifact location from that id; ``set_experiment`` is the
client's get-or-create by name; runs are listed newest first with a limit. Run ids and the
clock are module functions (``new_run_id``, ``now_millis``) that the adapter makes
deterministic, as MLflow's tests do by patching ``uuid`` and ``time``.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    PrimaryKeyConstraint,
    String,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

ACTIVE = "active"
DELETED = "deleted"
ARTIFACT_ROOT = "mlflow-artifacts:/experiments"


def new_run_id() -> str:
    return uuid.uuid4().hex


def now_millis() -> int:
    return int(time.time() * 1000)


class MlflowException(Exception):
    """What the store raises for a request it cannot serve."""


class Base(DeclarativeBase):
    pass


class SqlExperiment(Base):
    __tablename__ = "experiments"

    experiment_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    artifact_location: Mapped[str | None] = mapped_column(String(256))
    lifecycle_stage: Mapped[str] = mapped_column(String(32), default=ACTIVE)
    creation_time: Mapped[int | None] = mapped_column(BigInteger)
    last_update_time: Mapped[int | None] = mapped_column(BigInteger)
    tags: Mapped[list[SqlExperimentTag]] = relationship(back_populates="experiment", cascade="all")


class SqlExperimentTag(Base):
    __tablename__ = "experiment_tags"
    __table_args__ = (PrimaryKeyConstraint("key", "experiment_id"),)

    key: Mapped[str] = mapped_column(String(250))
    value: Mapped[str | None] = mapped_column(String(5000))
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.experiment_id"))
    experiment: Mapped[SqlExperiment] = relationship(back_populates="tags")


class SqlRun(Base):
    __tablename__ = "runs"

    run_uuid: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(250))
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.experiment_id"))
    user_id: Mapped[str | None] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(9), default="RUNNING")
    start_time: Mapped[int | None] = mapped_column(BigInteger)
    end_time: Mapped[int | None] = mapped_column(BigInteger)
    lifecycle_stage: Mapped[str] = mapped_column(String(20), default=ACTIVE)
    artifact_uri: Mapped[str | None] = mapped_column(String(200))
    experiment: Mapped[SqlExperiment] = relationship()
    params: Mapped[list[SqlParam]] = relationship(back_populates="run", cascade="all")
    tags: Mapped[list[SqlTag]] = relationship(back_populates="run", cascade="all")


class SqlParam(Base):
    __tablename__ = "params"
    __table_args__ = (PrimaryKeyConstraint("key", "run_uuid"),)

    key: Mapped[str] = mapped_column(String(250))
    value: Mapped[str] = mapped_column(String(8000))
    run_uuid: Mapped[str] = mapped_column(ForeignKey("runs.run_uuid"))
    run: Mapped[SqlRun] = relationship(back_populates="params")


class SqlTag(Base):
    __tablename__ = "tags"
    __table_args__ = (PrimaryKeyConstraint("key", "run_uuid"),)

    key: Mapped[str] = mapped_column(String(250))
    value: Mapped[str | None] = mapped_column(String(8000))
    run_uuid: Mapped[str] = mapped_column(ForeignKey("runs.run_uuid"))
    run: Mapped[SqlRun] = relationship(back_populates="tags")


class SqlMetric(Base):
    __tablename__ = "metrics"
    __table_args__ = (
        PrimaryKeyConstraint("key", "timestamp", "step", "run_uuid", "value", "is_nan"),
    )

    key: Mapped[str] = mapped_column(String(250))
    value: Mapped[float] = mapped_column(Float(precision=53))
    timestamp: Mapped[int] = mapped_column(BigInteger, default=0)
    step: Mapped[int] = mapped_column(BigInteger, default=0)
    is_nan: Mapped[bool] = mapped_column(Boolean, default=False)
    run_uuid: Mapped[str] = mapped_column(ForeignKey("runs.run_uuid"))


class SqlLatestMetric(Base):
    __tablename__ = "latest_metrics"
    __table_args__ = (
        PrimaryKeyConstraint("key", "run_uuid"),
        ForeignKeyConstraint(["run_uuid"], ["runs.run_uuid"]),
    )

    key: Mapped[str] = mapped_column(String(250))
    value: Mapped[float] = mapped_column(Float(precision=53))
    timestamp: Mapped[int] = mapped_column(BigInteger, default=0)
    step: Mapped[int] = mapped_column(BigInteger)
    is_nan: Mapped[bool] = mapped_column(Boolean)
    run_uuid: Mapped[str] = mapped_column(String(32))


def _get_or_create(session: Session, model: type[Any], **kwargs: Any) -> tuple[Any, bool]:
    """MLflow's old helper: the row matching ``kwargs``, or a new one added to the session."""
    instance = session.query(model).filter_by(**kwargs).first()
    if instance is not None:
        return instance, False
    instance = model(**kwargs)
    session.add(instance)
    return instance, True


class SqlAlchemyStore:
    """The tracking store, on the session of one request."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def _save_to_db(self, objs: Any) -> None:
        if isinstance(objs, list):
            self.session.add_all(objs)
        else:
            self.session.add(objs)

    def create_experiment(
        self, name: str, artifact_location: str | None = None, tags: dict[str, str] | None = None
    ) -> str:
        session = self.session
        creation_time = now_millis()
        experiment = SqlExperiment(
            name=name,
            lifecycle_stage=ACTIVE,
            artifact_location=artifact_location,
            creation_time=creation_time,
            last_update_time=creation_time,
        )
        experiment.tags = [SqlExperimentTag(key=k, value=v) for k, v in (tags or {}).items()]
        self._save_to_db(experiment)
        queried = session.query(SqlExperiment).filter_by(name=name).first()
        assert queried is not None
        eid = queried.experiment_id
        if not artifact_location:
            experiment.artifact_location = f"{ARTIFACT_ROOT}/{eid}"
        session.commit()
        return str(eid)

    def _get_experiment(self, experiment_id: str) -> SqlExperiment:
        experiment = (
            self.session.query(SqlExperiment)
            .filter(SqlExperiment.experiment_id == int(experiment_id))
            .one_or_none()
        )
        if experiment is None:
            raise MlflowException(f"No Experiment with id={experiment_id} exists")
        return experiment

    def get_experiment_by_name(self, experiment_name: str) -> SqlExperiment | None:
        return (
            self.session.query(SqlExperiment)
            .filter(SqlExperiment.name == experiment_name)
            .one_or_none()
        )

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        experiment = self._get_experiment(experiment_id)
        self.session.merge(
            SqlExperimentTag(experiment_id=experiment.experiment_id, key=key, value=value)
        )
        self.session.commit()

    def delete_experiment(self, experiment_id: str) -> None:
        experiment = self._get_experiment(experiment_id)
        experiment.lifecycle_stage = DELETED
        experiment.last_update_time = now_millis()
        runs = self.session.query(SqlRun).filter(SqlRun.experiment_id == experiment.experiment_id)
        for run in runs:
            run.lifecycle_stage = DELETED
        self._save_to_db(experiment)
        self.session.commit()

    def create_run(
        self, experiment_id: str, user_id: str, run_name: str, tags: dict[str, str] | None = None
    ) -> SqlRun:
        experiment = self._get_experiment(experiment_id)
        if experiment.lifecycle_stage != ACTIVE:
            raise MlflowException(f"The experiment {experiment_id} must be active")
        run_id = new_run_id()
        run = SqlRun(
            name=run_name,
            run_uuid=run_id,
            experiment_id=experiment.experiment_id,
            artifact_uri=f"{experiment.artifact_location}/{run_id}/artifacts",
            user_id=user_id,
            status="RUNNING",
            start_time=now_millis(),
            end_time=None,
            lifecycle_stage=ACTIVE,
        )
        run.tags = [SqlTag(key=k, value=v) for k, v in (tags or {}).items()]
        run.tags.append(SqlTag(key="mlflow.runName", value=run_name))
        self._save_to_db(run)
        self.session.commit()
        return run

    def _get_run(self, run_uuid: str) -> SqlRun:
        runs = self.session.query(SqlRun).filter(SqlRun.run_uuid == run_uuid).all()
        if len(runs) == 0:
            raise MlflowException(f"Run with id={run_uuid} not found")
        return runs[0]

    def log_param(self, run_id: str, key: str, value: str) -> None:
        run = self._get_run(run_id)
        existing, created = _get_or_create(self.session, SqlParam, run_uuid=run.run_uuid, key=key)
        if not created and existing.value != value:
            raise MlflowException(f"Changing param values is not allowed: {key}")
        existing.value = value
        self.session.commit()

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        run = self._get_run(run_id)
        self.session.merge(SqlTag(run_uuid=run.run_uuid, key=key, value=value))
        self.session.commit()

    def log_metric(self, run_id: str, key: str, value: float, timestamp: int, step: int) -> None:
        run = self._get_run(run_id)
        is_nan = math.isnan(value)
        metric = SqlMetric(
            run_uuid=run.run_uuid,
            key=key,
            value=0 if is_nan else value,
            timestamp=timestamp,
            step=step,
            is_nan=is_nan,
        )
        self._save_to_db(metric)
        latest = self.session.get(SqlLatestMetric, {"key": key, "run_uuid": run.run_uuid})
        if latest is None:
            self._save_to_db(
                SqlLatestMetric(
                    run_uuid=run.run_uuid,
                    key=key,
                    value=metric.value,
                    timestamp=timestamp,
                    step=step,
                    is_nan=is_nan,
                )
            )
        elif (step, timestamp, value) > (latest.step, latest.timestamp, latest.value):
            latest.value, latest.timestamp, latest.step = metric.value, timestamp, step
            latest.is_nan = is_nan
        self.session.commit()

    def update_run_info(self, run_id: str, run_status: str, end_time: int) -> None:
        run = self._get_run(run_id)
        run.status = run_status
        run.end_time = end_time
        self._save_to_db(run)
        self.session.commit()

    def search_runs(self, experiment_id: str, max_results: int) -> list[SqlRun]:
        """The runs of an experiment, newest first (MLflow's default order)."""
        statement = (
            select(SqlRun)
            .where(
                SqlRun.experiment_id == int(experiment_id),
                SqlRun.lifecycle_stage == ACTIVE,
            )
            .order_by(SqlRun.start_time.desc(), SqlRun.run_uuid)
            .limit(max_results)
        )
        return list(self.session.scalars(statement))


def set_experiment(store: SqlAlchemyStore, experiment_name: str) -> str:
    """``mlflow.set_experiment``: the id of the experiment called so, created if missing."""
    experiment = store.get_experiment_by_name(experiment_name)
    if experiment is None:
        return store.create_experiment(experiment_name)
    if experiment.lifecycle_stage == DELETED:
        raise MlflowException(f"Cannot set a deleted experiment {experiment_name!r}")
    return str(experiment.experiment_id)
