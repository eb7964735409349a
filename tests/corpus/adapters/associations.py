"""Association objects: ``association/`` (basic, proxied, dict of sets with default)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.corpus.spec import Example, Phase, Source

CATALOG = (("SA T-Shirt", 10.99), ("SA Mug", 6.50), ("SA Hat", 8.99), ("MySQL Crowbar", 16.99))


def _items(session: Session, m: Any) -> dict[str, Any]:
    return {item.description: item for item in session.scalars(select(m.Item))}


def _order(session: Session, m: Any) -> Any:
    """The demo's query for the order."""
    return session.scalars(select(m.Order).filter_by(customer_name="john smith")).one()


def stock(session: Session, m: Any) -> None:
    """Both demos' first commit: the catalog of four items (four plain inserts, set up
    directly only)."""
    session.add_all([m.Item(description, price) for description, price in CATALOG])
    session.commit()


def cancel(session: Session, m: Any) -> None:
    """Ours: the stored order deleted, its lines with it (``delete-orphan``)."""
    session.delete(_order(session, m))
    session.commit()


# -- examples/association/basic_association.py: its __main__ block ---------------------------


def place_order(session: Session, m: Any) -> None:
    """basic_association's second commit: an order of the stored mug, crowbar (on sale)
    and hat, as OrderItem objects; then the demo's two queries."""
    items = _items(session, m)
    order = m.Order("john smith")
    order.order_items.append(m.OrderItem(items["SA Mug"]))
    order.order_items.append(m.OrderItem(items["MySQL Crowbar"], 10.99))
    order.order_items.append(m.OrderItem(items["SA Hat"]))
    session.add(order)
    session.commit()
    order = _order(session, m)
    [(line.item.description, line.price) for line in order.order_items]
    on_sale = (
        select(m.Order)
        .join(m.OrderItem)
        .join(m.Item)
        .where(m.Item.description == "MySQL Crowbar", m.Item.price > m.OrderItem.price)
    )
    [o.customer_name for o in session.scalars(on_sale)]


def amend_order(session: Session, m: Any) -> None:
    """Ours, on the stored order: a line repriced, the hat line removed (``delete-orphan``),
    a T-shirt line added, the customer renamed."""
    order, items = _order(session, m), _items(session, m)
    by_item = {line.item.description: line for line in order.order_items}
    by_item["SA Mug"].price = 5.50
    order.order_items.remove(by_item["SA Hat"])
    order.order_items.append(m.OrderItem(items["SA T-Shirt"]))
    order.customer_name = "john q. smith"
    session.commit()


BASIC_ASSOCIATION = Example(
    name="association/basic_association",
    sources=(Source("association/basic_association.py"),),
    phases=(
        Phase("stock", stock, recorded=False),
        Phase("order", place_order),
        Phase("amend", amend_order),
        Phase("cancel", cancel, after=("stock", "order")),
    ),
)

# -- examples/association/proxied_association.py: its __main__ block -----------------------


def place_proxied_order(session: Session, m: Any) -> None:
    """proxied_association's second commit: mug and hat through the ``items`` proxy, the
    crowbar as an explicit OrderItem; then the demo's queries."""
    items = _items(session, m)
    order = m.Order("john smith")
    order.items.append(items["SA Mug"])
    order.items.append(items["SA Hat"])
    order.order_items.append(m.OrderItem(items["MySQL Crowbar"], 10.99))
    session.add(order)
    session.commit()
    order = _order(session, m)
    [(a.item.description, a.price, a.item.price) for a in order.order_items]
    [(item.description, item.price) for item in order.items]
    on_sale = (
        select(m.Order)
        .join(m.OrderItem)
        .join(m.Item)
        .filter(m.Item.description == "MySQL Crowbar")
        .filter(m.Item.price > m.OrderItem.price)
    )
    [o.customer_name for o in session.scalars(on_sale)]


def amend_proxied_order(session: Session, m: Any) -> None:
    """Ours, through the proxy on the stored order: the hat removed (its OrderItem goes,
    ``delete-orphan``), the T-shirt added, the mug line repriced."""
    order, items = _order(session, m), _items(session, m)
    order.items.remove(items["SA Hat"])
    order.items.append(items["SA T-Shirt"])
    (mug,) = [line for line in order.order_items if line.item is items["SA Mug"]]
    mug.price = 5.50
    session.commit()


PROXIED_ASSOCIATION = Example(
    name="association/proxied_association",
    sources=(Source("association/proxied_association.py"),),
    phases=(
        Phase("stock", stock, recorded=False),
        Phase("order", place_proxied_order),
        Phase("amend", amend_proxied_order),
        Phase("cancel", cancel, after=("stock", "order")),
    ),
)

# -- examples/association/dict_of_sets_with_default.py: its __main__ block -----------------


def create_collections(session: Session, m: Any) -> None:
    """The demo's first commit: A with collections {"1": {1, 2, 3}}."""
    session.add_all([m.A(collections={"1": {1, 2, 3}})])
    session.commit()


def extend_collections(session: Session, m: Any) -> None:
    """The demo's next two commits on the stored A: 4 added to set "1", then set "2"
    created by the defaulting dict and filled with 7, 8, 9."""
    a1 = session.scalars(select(m.A)).one()
    assert a1.collections["1"] == {1, 2, 3}
    a1.collections["1"].add(4)
    session.commit()
    a1.collections["2"].update([7, 8, 9])
    session.commit()
    assert a1.collections["2"] == {7, 8, 9}


DICT_OF_SETS = Example(
    name="association/dict_of_sets_with_default",
    sources=(Source("association/dict_of_sets_with_default.py"),),
    phases=(Phase("create", create_collections), Phase("extend", extend_collections)),
    # B.elements is a set: SQLAlchemy inserts its C rows in the set's (arbitrary) order.
    arbitrary=("c.id",),
)

EXAMPLES = (BASIC_ASSOCIATION, PROXIED_ASSOCIATION, DICT_OF_SETS)
