"""Service layers of applications (:mod:`tests.corpus.apps`), called the way requests would.

Each phase is a few requests handled in one session, against the rows earlier phases
stored: the CRUD routes of a FastAPI-style API, an MLflow-style tracking store that
queries back what it adds, and a Flask-Mega-Tutorial-style microblog with write-only
followers, dynamic posts and a view counter. Unlike the other adapters, the code is not
SQLAlchemy's examples but ours, written the way those projects write theirs.
"""

from __future__ import annotations

import gc
import itertools
import uuid
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.corpus.spec import Example, Phase

# -- tests.corpus.apps.crud_service: the FastAPI template's routes ------------------------------


def _login(session: Session, m: Any, email: str, password: str) -> Any:
    user = m.authenticate(session=session, email=email, password=password)
    assert user is not None, f"{email} cannot log in"
    return user


def signup(session: Session, m: Any) -> None:
    """Two sign-ups, each answered with the stored user's fields; both can log in."""
    alice = m.register_user(
        session,
        {"email": "alice@example.com", "password": "s3cret", "full_name": "Alice"},
    )
    bob = m.register_user(session, {"email": "bob@example.com", "password": "hunter2"})
    assert (alice["email"], alice["is_active"], alice["is_superuser"]) == (
        "alice@example.com",
        True,
        False,
    )
    assert (bob["full_name"], bob["is_active"]) == (None, True)
    assert _login(session, m, "bob@example.com", "hunter2").email == "bob@example.com"
    # The template's init_db makes the first user a superuser.
    m.update_user(
        session=session,
        db_user=_login(session, m, "alice@example.com", "s3cret"),
        user_in={"is_superuser": True},
    )


def signup_twice(session: Session, m: Any) -> None:
    """A sign-up, then the same e-mail again: refused with 400 because the first is found."""
    carol = m.register_user(session, {"email": "carol@example.com", "password": "pw"})
    assert carol["email"] == "carol@example.com"
    with pytest.raises(m.HTTPError) as raised:
        m.register_user(session, {"email": "carol@example.com", "password": "other"})
    assert raised.value.status_code == 400


def create_items(session: Session, m: Any) -> None:
    """Bob creates three items, reads each back by the id the response gave, lists a page."""
    bob = _login(session, m, "bob@example.com", "hunter2")
    created = [
        m.create_item_route(session, bob, {"title": title, "description": f"about {title}"})
        for title in ("pear", "apple", "fig")
    ]
    for item in created:
        assert m.read_item(session, bob, item["id"]) == item
    assert [i["title"] for i in m.list_own_items(session, bob, limit=2)] == ["apple", "fig"]
    assert len(bob.items) == 3


def update(session: Session, m: Any) -> None:
    """Alice renames herself and changes her password, then edits one of Bob's items."""
    alice = _login(session, m, "alice@example.com", "s3cret")
    changed = m.update_user_me(session, alice, {"full_name": "Alice A.", "password": "n3w"})
    assert changed["full_name"] == "Alice A."
    assert m.authenticate(session=session, email="alice@example.com", password="s3cret") is None
    alice = _login(session, m, "alice@example.com", "n3w")
    assert m.read_user_by_id(session, alice.id)["full_name"] == "Alice A."
    bob = m.get_user_by_email(session=session, email="bob@example.com")
    fig = next(i for i in bob.items if i.title == "fig")
    edited = m.update_item(session, alice, fig.id, {"title": "figs", "description": None})
    assert (edited["title"], edited["owner_id"]) == ("figs", bob.id)
    assert [i["title"] for i in m.list_own_items(session, bob)] == ["apple", "figs", "pear"]


def count_items(session: Session, m: Any) -> None:
    """Bob adds an item, then lists the page with its count, as the template's route does."""
    bob = _login(session, m, "bob@example.com", "hunter2")
    m.create_item_route(session, bob, {"title": "kiwi"})
    page = m.read_items(session, bob)
    assert page["count"] == 4
    assert [i["title"] for i in page["data"]] == ["pear", "apple", "fig", "kiwi"]


def delete(session: Session, m: Any) -> None:
    """Bob deletes an item; Alice deletes Bob, his other items by cascade; he is gone."""
    bob = _login(session, m, "bob@example.com", "hunter2")
    bob_id = bob.id
    pear = next(i for i in bob.items if i.title == "pear")
    m.delete_item(session, bob, pear.id)
    assert [i.title for i in bob.items] == ["apple", "fig"]
    alice = _login(session, m, "alice@example.com", "s3cret")
    m.delete_user(session, alice, bob_id)
    with pytest.raises(m.HTTPError):
        m.read_user_by_id(session, bob_id)
    assert m.get_user_by_email(session=session, email="bob@example.com") is None
    assert session.scalars(select(m.Item)).all() == []


CRUD_SERVICE = Example(
    name="services/crud_service",
    sources=(),
    models="tests.corpus.apps.crud_service",
    phases=(
        Phase("signup", signup),
        Phase("signup_twice", signup_twice),
        Phase("create_items", create_items, after=("signup",)),
        Phase("update", update, after=("signup", "create_items")),
        Phase("count_items", count_items, after=("signup", "create_items")),
        Phase("delete", delete, after=("signup", "create_items")),
    ),
)

# -- tests.corpus.apps.tracking_store: MLflow's SqlAlchemyStore -------------------------------


def deterministic(m: Any, phase: str) -> None:
    """Run ids and the clock that repeat in every run of a phase (MLflow's tests patch
    ``uuid`` and ``time`` alike); different phases get different ids and later times."""
    ids = itertools.count()
    ticks = itertools.count()
    start = 1_700_000_000_000 + 1_000_000 * len(phase) + sum(map(ord, phase))
    m.new_run_id = lambda: uuid.uuid5(uuid.NAMESPACE_URL, f"{phase}/{next(ids)}").hex
    m.now_millis = lambda: start + 1000 * next(ticks)


def experiments(session: Session, m: Any) -> None:
    """``set_experiment`` twice (the second finds the first), and one with tags."""
    store = m.SqlAlchemyStore(session)
    first = m.set_experiment(store, "Default")
    assert m.set_experiment(store, "Default") == first
    store.create_experiment("churn", tags={"team": "growth", "owner": "ana"})
    churn = store.get_experiment_by_name("churn")
    assert churn.artifact_location == f"{m.ARTIFACT_ROOT}/{churn.experiment_id}"
    assert sorted(t.key for t in churn.tags) == ["owner", "team"]


def _train(store: Any, m: Any, experiment_id: str, names: tuple[str, ...]) -> list[Any]:
    runs = []
    for n, name in enumerate(names):
        run = store.create_run(experiment_id, "ana", name, tags={"model": "xgb"})
        store.log_param(run.run_uuid, "lr", str(0.1 * (n + 1)))
        store.log_param(run.run_uuid, "lr", str(0.1 * (n + 1)))  # the same value again: found
        for step, loss in enumerate((1.0, 0.5 / (n + 1), float("nan"))):
            store.log_metric(run.run_uuid, "loss", loss, timestamp=1000 + step, step=step)
        store.update_run_info(run.run_uuid, "FINISHED", m.now_millis())
        runs.append(run)
    return runs


def runs(session: Session, m: Any) -> None:
    """Three runs of the stored experiment with params and metrics; the newest two listed."""
    store = m.SqlAlchemyStore(session)
    churn = m.set_experiment(store, "churn")
    _train(store, m, churn, ("first", "second", "third"))
    assert [r.name for r in store.search_runs(churn, max_results=2)] == ["third", "second"]


def new_experiment_runs(session: Session, m: Any) -> None:
    """``set_experiment`` of a new name twice, then runs in it: the store passes the new
    experiment's id around as a string, as MLflow's REST API does."""
    store = m.SqlAlchemyStore(session)
    fresh = m.set_experiment(store, "fresh")
    assert m.set_experiment(store, "fresh") == fresh
    _train(store, m, fresh, ("only",))
    assert [r.name for r in store.search_runs(fresh, max_results=5)] == ["only"]


def tags(session: Session, m: Any) -> None:
    """Tags merged over stored ones (an overwrite and a new key), on runs and experiments."""
    store = m.SqlAlchemyStore(session)
    churn = m.set_experiment(store, "churn")
    (newest,) = store.search_runs(churn, max_results=1)
    store.set_tag(newest.run_uuid, "model", "lgbm")
    store.set_tag(newest.run_uuid, "reviewed", "yes")
    store.set_experiment_tag(churn, "owner", "bo")
    store.set_experiment_tag(churn, "stage", "prod")
    assert {t.key: t.value for t in newest.tags}["model"] == "lgbm"


def delete_experiment(session: Session, m: Any) -> None:
    """The stored experiment deleted (its runs too, softly): no run is listed any more."""
    store = m.SqlAlchemyStore(session)
    churn = m.set_experiment(store, "churn")
    store.delete_experiment(churn)
    assert store.search_runs(churn, max_results=10) == []
    with pytest.raises(m.MlflowException):
        m.set_experiment(store, "churn")


TRACKING_STORE = Example(
    name="services/tracking_store",
    sources=(),
    models="tests.corpus.apps.tracking_store",
    phases=(
        Phase("experiments", experiments),
        Phase("runs", runs),
        Phase("new_experiment_runs", new_experiment_runs, after=("experiments",)),
        Phase("tags", tags, after=("experiments", "runs")),
        Phase("delete_experiment", delete_experiment, after=("experiments", "runs")),
    ),
    prepare=deterministic,
)

# -- tests.corpus.apps.blog: the Flask Mega-Tutorial's microblog ------------------------------

USERS = ("susan", "john", "mary")


def register(session: Session, m: Any) -> None:
    """Three users register and write two posts each."""
    for name in USERS:
        m.register(session, name, f"{name}@example.com", f"{name}-pw")
    for name in USERS:
        user = m.user_by_name(session, name)
        for n in (1, 2):
            m.write_post(session, user, f"post {n} from {name}")


def follow_one(session: Session, m: Any) -> None:
    """John follows Susan: checked with ``is_following`` first, as ``follow`` does."""
    john = m.user_by_name(session, "john")
    assert m.follow(session, john, "susan") == "You are following susan!"


def follow_many(session: Session, m: Any) -> None:
    """John follows Susan and Mary (the second check queries links the first recorded)."""
    john = m.user_by_name(session, "john")
    m.follow(session, john, "susan")
    m.follow(session, john, "mary")
    m.follow(session, john, "susan")
    assert john.is_following(m.user_by_name(session, "mary"))


def unfollow(session: Session, m: Any) -> None:
    """John unfollows Susan, whom he follows in the database."""
    john = m.user_by_name(session, "john")
    assert m.unfollow(session, john, "susan") == "You are not following susan."


def followers_count(session: Session, m: Any) -> None:
    """Mary follows Susan, then Susan's profile shows her followers' count."""
    mary = m.user_by_name(session, "mary")
    m.follow(session, mary, "susan")
    assert m.user_by_name(session, "susan").followers_count() == 2


def profile(session: Session, m: Any) -> None:
    """Susan posts again; her profile's first page (a dynamic relationship) shows it."""
    susan = m.user_by_name(session, "susan")
    m.write_post(session, susan, "post 3 from susan")
    assert m.profile(session, "susan") == ["post 3 from susan", "post 2 from susan"]


def timeline(session: Session, m: Any) -> None:
    """John's request: ``before_request`` stamps ``last_seen``, then his home timeline."""
    john = m.user_by_name(session, "john")
    m.before_request(session, john)
    assert m.timeline(session, john, per_page=3) == [
        "post 2 from john",
        "post 1 from john",
        "post 2 from susan",
    ]


def views(session: Session, m: Any) -> None:
    """A post viewed twice: loaded, counted, committed, forgotten, loaded and counted again."""
    post_id = session.scalars(select(m.Post.id).where(m.Post.body == "post 1 from mary")).one()
    assert m.view_post(session, post_id) == 1
    gc.collect()  # the post is no longer referenced: the next get loads it again
    assert m.view_post(session, post_id) == 2


def views_expunged(session: Session, m: Any) -> None:
    """A post viewed twice with the session emptied in between, as a worker reusing its
    session between requests does: the second request loads the counted row again."""
    post_id = session.scalars(select(m.Post.id).where(m.Post.body == "post 1 from mary")).one()
    assert m.view_post(session, post_id) == 1
    session.expunge_all()
    assert m.view_post(session, post_id) == 2


def edit_profile(session: Session, m: Any) -> None:
    """Mary is seen, renames herself; the new name is found, the old one is free."""
    mary = m.user_by_name(session, "mary")
    m.before_request(session, mary)
    m.edit_profile(session, mary, "maria", "hi")
    assert m.user_by_name(session, "maria") is mary
    with pytest.raises(LookupError):
        m.user_by_name(session, "mary")
    m.edit_profile(session, m.user_by_name(session, "susan"), "mary", "taken over")


BLOG = Example(
    name="services/blog",
    sources=(),
    models="tests.corpus.apps.blog",
    phases=(
        Phase("register", register),
        Phase("follow_one", follow_one),
        Phase("follow_many", follow_many, after=("register",)),
        Phase("unfollow", unfollow, after=("register", "follow_one")),
        Phase("followers_count", followers_count, after=("register", "follow_one")),
        Phase("profile", profile, after=("register",)),
        Phase("timeline", timeline, after=("register", "follow_one")),
        Phase("views", views, after=("register",)),
        Phase("views_expunged", views_expunged, after=("register",)),
        Phase("edit_profile", edit_profile, after=("register",)),
    ),
    volatile=("user.last_seen", "post.timestamp"),
)

EXAMPLES = (CRUD_SERVICE, TRACKING_STORE, BLOG)
