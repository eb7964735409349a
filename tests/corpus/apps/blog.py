"""A microblog in the style of the Flask Mega-Tutorial's ``app/models.py`` and routes.

Users follow each other through a write-only many-to-many relationship
(``WriteOnlyMapped``) and check it with a query before changing it; a user's posts are a
``dynamic`` relationship read a page at a time; the home page lists the posts of the
users one follows; posts count their views. The tutorial's ``db.session`` is the session
of the object (``object_session``) or the one a view is given.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from sqlalchemy import Column, ForeignKey, Select, String, Table, func, or_, select
from sqlalchemy.orm import (
    DeclarativeBase,
    DynamicMapped,
    Mapped,
    Session,
    WriteOnlyMapped,
    aliased,
    mapped_column,
    object_session,
    relationship,
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


followers = Table(
    "followers",
    Base.metadata,
    Column("follower_id", ForeignKey("user.id"), primary_key=True),
    Column("followed_id", ForeignKey("user.id"), primary_key=True),
)


class User(Base):
    __tablename__ = "user"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), index=True, unique=True)
    email: Mapped[str] = mapped_column(String(120), index=True, unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(256))
    about_me: Mapped[str | None] = mapped_column(String(140))
    last_seen: Mapped[dt.datetime | None] = mapped_column(default=utcnow)

    posts: DynamicMapped[Post] = relationship(back_populates="author", lazy="dynamic")
    following: WriteOnlyMapped[User] = relationship(
        secondary=followers,
        primaryjoin=(followers.c.follower_id == id),
        secondaryjoin=(followers.c.followed_id == id),
        back_populates="followers",
    )
    followers: WriteOnlyMapped[User] = relationship(
        secondary=followers,
        primaryjoin=(followers.c.followed_id == id),
        secondaryjoin=(followers.c.follower_id == id),
        back_populates="following",
    )

    def set_password(self, password: str) -> None:
        self.password_hash = hashlib.sha256(b"corpus" + password.encode()).hexdigest()

    def _session(self) -> Session:
        session = object_session(self)
        assert session is not None
        return session

    def follow(self, user: User) -> None:
        if not self.is_following(user):
            self.following.add(user)

    def unfollow(self, user: User) -> None:
        if self.is_following(user):
            self.following.remove(user)

    def is_following(self, user: User) -> bool:
        query = self.following.select().where(User.id == user.id)
        return self._session().scalar(query) is not None

    def followers_count(self) -> int:
        query = select(func.count()).select_from(self.followers.select().subquery())
        return self._session().scalar(query) or 0

    def following_posts(self) -> Select[Post]:
        author = aliased(User)
        follower = aliased(User)
        return (
            select(Post)
            .join(Post.author.of_type(author))
            .join(author.followers.of_type(follower), isouter=True)
            .where(or_(follower.id == self.id, author.id == self.id))
            .group_by(Post)
            .order_by(Post.timestamp.desc(), Post.id.desc())
        )


class Post(Base):
    __tablename__ = "post"

    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(140))
    timestamp: Mapped[dt.datetime] = mapped_column(index=True, default=utcnow)
    user_id: Mapped[int] = mapped_column(ForeignKey(User.id), index=True)
    views: Mapped[int] = mapped_column(default=0)

    author: Mapped[User] = relationship(back_populates="posts")


# -- routes.py -------------------------------------------------------------------------------


def register(session: Session, username: str, email: str, password: str) -> User:
    """``/register``: a new user, committed."""
    user = User(username=username, email=email)
    user.set_password(password)
    session.add(user)
    session.commit()
    return user


def user_by_name(session: Session, username: str) -> User:
    """``db.first_or_404(sa.select(User).where(User.username == username))``."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise LookupError(f"404: no user {username!r}")
    return user


def before_request(session: Session, current_user: User) -> None:
    """``@app.before_request``: the user was seen now."""
    current_user.last_seen = utcnow()
    session.commit()


def write_post(session: Session, current_user: User, body: str) -> Post:
    """``/index`` POST: a new post by the current user."""
    post = Post(body=body, author=current_user)
    session.add(post)
    session.commit()
    return post


def follow(session: Session, current_user: User, username: str) -> str:
    """``/follow/<username>``."""
    user = user_by_name(session, username)
    if user is current_user:
        return "You cannot follow yourself!"
    current_user.follow(user)
    session.commit()
    return f"You are following {username}!"


def unfollow(session: Session, current_user: User, username: str) -> str:
    """``/unfollow/<username>``."""
    user = user_by_name(session, username)
    if user is current_user:
        return "You cannot unfollow yourself!"
    current_user.unfollow(user)
    session.commit()
    return f"You are not following {username}."


def profile(session: Session, username: str, per_page: int = 2) -> list[str]:
    """``/user/<username>``: the first page of a user's posts, newest first."""
    user = user_by_name(session, username)
    return [p.body for p in user.posts.order_by(Post.timestamp.desc(), Post.id.desc())[:per_page]]


def timeline(session: Session, current_user: User, per_page: int = 5) -> list[str]:
    """``/index`` GET: the first page of the posts of the users one follows, and one's own."""
    query = current_user.following_posts().limit(per_page)
    return [p.body for p in session.scalars(query)]


def view_post(session: Session, post_id: int) -> int:
    """A post's page: one more view, committed; the new count."""
    post = session.get(Post, post_id)
    if post is None:
        raise LookupError(f"404: no post {post_id}")
    post.views += 1
    session.commit()
    return post.views


def edit_profile(session: Session, current_user: User, username: str, about_me: str) -> None:
    """``/edit_profile``: the name is checked for uniqueness first."""
    if username != current_user.username:
        taken = session.scalar(select(User).where(User.username == username))
        if taken is not None:
            raise ValueError("Please use a different username.")
    current_user.username = username
    current_user.about_me = about_me
    session.commit()
