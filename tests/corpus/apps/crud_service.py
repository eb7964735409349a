"""A CRUD service in the style of the FastAPI full-stack template's ``crud.py`` and routes.

Users own items. Every handler works on the request's session: it adds, commits and
refreshes the object, then returns its fields the way a response model would serialise
them. Passwords are hashed with a fixed salt (the template uses bcrypt, whose random salt
would make every run's rows different).
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import ForeignKey, String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

SALT = b"corpus"


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "user_account"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(255), unique=True, index=True)
    full_name: Mapped[str | None] = mapped_column(String(255))
    hashed_password: Mapped[str] = mapped_column(String(128))
    is_active: Mapped[bool] = mapped_column(default=True)
    is_superuser: Mapped[bool] = mapped_column(default=False)
    items: Mapped[list[Item]] = relationship(back_populates="owner", cascade="all, delete-orphan")


class Item(Base):
    __tablename__ = "item"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(String(255))
    owner_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    owner: Mapped[User] = relationship(back_populates="items")


def get_password_hash(password: str) -> str:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), SALT, 1000).hex()


def _public(obj: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in fields}


def user_public(user: User) -> dict[str, Any]:
    return _public(user, ("id", "email", "full_name", "is_active", "is_superuser"))


def item_public(item: Item) -> dict[str, Any]:
    return _public(item, ("id", "title", "description", "owner_id"))


# -- crud.py ---------------------------------------------------------------------------------


def create_user(*, session: Session, user_create: dict[str, Any]) -> User:
    data = dict(user_create)
    password = data.pop("password")
    db_obj = User(**data, hashed_password=get_password_hash(password))
    session.add(db_obj)
    session.commit()
    session.refresh(db_obj)
    return db_obj


def update_user(*, session: Session, db_user: User, user_in: dict[str, Any]) -> User:
    user_data = dict(user_in)
    if "password" in user_data:
        user_data["hashed_password"] = get_password_hash(user_data.pop("password"))
    for key, value in user_data.items():
        setattr(db_user, key, value)
    session.add(db_user)
    session.commit()
    session.refresh(db_user)
    return db_user


def get_user_by_email(*, session: Session, email: str) -> User | None:
    return session.scalars(select(User).where(User.email == email)).first()


def authenticate(*, session: Session, email: str, password: str) -> User | None:
    db_user = get_user_by_email(session=session, email=email)
    if db_user is None or db_user.hashed_password != get_password_hash(password):
        return None
    return db_user


def create_item(*, session: Session, item_in: dict[str, Any], owner_id: int) -> Item:
    db_item = Item(**item_in, owner_id=owner_id)
    session.add(db_item)
    session.commit()
    session.refresh(db_item)
    return db_item


# -- api/routes ------------------------------------------------------------------------------


class HTTPError(Exception):
    """What the template raises as ``HTTPException``."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code


def register_user(session: Session, user_in: dict[str, Any]) -> dict[str, Any]:
    """``POST /users/signup``."""
    if get_user_by_email(session=session, email=user_in["email"]) is not None:
        raise HTTPError(400, "The user with this email already exists in the system")
    return user_public(create_user(session=session, user_create=user_in))


def read_user_by_id(session: Session, user_id: int) -> dict[str, Any]:
    """``GET /users/{user_id}``."""
    user = session.get(User, user_id)
    if user is None:
        raise HTTPError(404, "User not found")
    return user_public(user)


def update_user_me(session: Session, current_user: User, user_in: dict[str, Any]) -> dict[str, Any]:
    """``PATCH /users/me``."""
    if "email" in user_in:
        existing = get_user_by_email(session=session, email=user_in["email"])
        if existing is not None and existing.id != current_user.id:
            raise HTTPError(409, "User with this email already exists")
    return user_public(update_user(session=session, db_user=current_user, user_in=user_in))


def create_item_route(
    session: Session, current_user: User, item_in: dict[str, Any]
) -> dict[str, Any]:
    """``POST /items/``."""
    return item_public(create_item(session=session, item_in=item_in, owner_id=current_user.id))


def read_item(session: Session, current_user: User, item_id: int) -> dict[str, Any]:
    """``GET /items/{id}``."""
    item = session.get(Item, item_id)
    if item is None:
        raise HTTPError(404, "Item not found")
    if not current_user.is_superuser and item.owner_id != current_user.id:
        raise HTTPError(400, "Not enough permissions")
    return item_public(item)


def read_items(
    session: Session, current_user: User, skip: int = 0, limit: int = 100
) -> dict[str, Any]:
    """``GET /items/``: a page of the user's items and how many there are."""
    count_statement = select(func.count()).select_from(Item)
    statement = select(Item).order_by(Item.id).offset(skip).limit(limit)
    if not current_user.is_superuser:
        count_statement = count_statement.where(Item.owner_id == current_user.id)
        statement = statement.where(Item.owner_id == current_user.id)
    count = session.scalar(count_statement)
    items = session.scalars(statement).all()
    return {"data": [item_public(i) for i in items], "count": count}


def list_own_items(
    session: Session, current_user: User, skip: int = 0, limit: int = 100
) -> list[dict[str, Any]]:
    """``GET /items/`` of a version without the count: a page ordered by title."""
    statement = (
        select(Item)
        .where(Item.owner_id == current_user.id)
        .order_by(Item.title)
        .offset(skip)
        .limit(limit)
    )
    return [item_public(i) for i in session.scalars(statement)]


def update_item(
    session: Session, current_user: User, item_id: int, item_in: dict[str, Any]
) -> dict[str, Any]:
    """``PUT /items/{id}``."""
    item = session.get(Item, item_id)
    if item is None:
        raise HTTPError(404, "Item not found")
    if not current_user.is_superuser and item.owner_id != current_user.id:
        raise HTTPError(400, "Not enough permissions")
    for key, value in item_in.items():
        setattr(item, key, value)
    session.add(item)
    session.commit()
    session.refresh(item)
    return item_public(item)


def delete_item(session: Session, current_user: User, item_id: int) -> None:
    """``DELETE /items/{id}``."""
    item = session.get(Item, item_id)
    if item is None:
        raise HTTPError(404, "Item not found")
    if not current_user.is_superuser and item.owner_id != current_user.id:
        raise HTTPError(400, "Not enough permissions")
    session.delete(item)
    session.commit()


def delete_user(session: Session, current_user: User, user_id: int) -> None:
    """``DELETE /users/{user_id}`` (superusers only): the user and, by cascade, the items."""
    user = session.get(User, user_id)
    if user is None:
        raise HTTPError(404, "User not found")
    if user == current_user:
        raise HTTPError(403, "Super users are not allowed to delete themselves")
    session.delete(user)
    session.commit()
