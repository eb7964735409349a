"""``generic_associations/``: four ways for Customer and Supplier to share addresses.

Each script ends in the same demo (a customer with two addresses, a supplier with one,
then a query printing every customer's addresses); the phases after it are ours and use
each model the way its docstring describes: edit, move an address to the other parent
(where the mapping allows one), delete one.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.corpus.spec import Example, Phase, Source

CUSTOMER = (
    ("123 anywhere street", "New York", "10110"),
    ("40 main street", "San Francisco", "95732"),
)
SUPPLIER = (("2569 west elm", "Detroit", "56785"),)


def _address_classes(m: Any) -> tuple[Any, Any]:
    # table_per_related makes one Address class per parent; the others share one.
    if hasattr(m.Customer, "Address"):
        return m.Customer.Address, m.Supplier.Address
    return m.Address, m.Address


def _address(cls: Any, street: str, city: str, zip: str) -> Any:
    return cls(street=street, city=city, zip=zip)


def _parents(session: Session, m: Any) -> tuple[Any, Any]:
    customer = session.scalars(select(m.Customer).filter_by(name="customer 1")).one()
    supplier = session.scalars(select(m.Supplier).filter_by(company_name="Ace Hammers")).one()
    return customer, supplier


def demo(session: Session, m: Any) -> None:
    """The script's demo: add both parents with their addresses, commit, print them all."""
    for_customer, for_supplier = _address_classes(m)
    session.add_all(
        [
            m.Customer(name="customer 1", addresses=[_address(for_customer, *a) for a in CUSTOMER]),
            m.Supplier(
                company_name="Ace Hammers",
                addresses=[_address(for_supplier, *a) for a in SUPPLIER],
            ),
        ]
    )
    session.commit()
    for customer in session.query(m.Customer):
        for address in customer.addresses:
            repr(address)
            getattr(address, "parent", None)


def edit(session: Session, m: Any) -> None:
    """Ours: the stored customer renamed, its first address changed, a new address for
    the supplier."""
    customer, supplier = _parents(session, m)
    customer.name = "customer one"
    customer.addresses[0].city = "Brooklyn"
    supplier.addresses.append(_address(_address_classes(m)[1], "1 dock road", "Detroit", "56786"))
    session.commit()


def move(session: Session, m: Any) -> None:
    """Ours: the customer's second address moved to the supplier (a relationship move)."""
    customer, supplier = _parents(session, m)
    # Loaded first: loading it after the removal would autoflush the address parentless.
    len(supplier.addresses)
    address = customer.addresses[1]
    customer.addresses.remove(address)
    supplier.addresses.append(address)
    session.commit()


def detach(session: Session, m: Any) -> None:
    """Ours, for table_per_related, whose address classes differ per parent: the
    customer's second address taken out of its collection (its parent_id becomes NULL)."""
    customer, _ = _parents(session, m)
    customer.addresses.remove(customer.addresses[1])
    session.commit()


def delete(session: Session, m: Any) -> None:
    """Ours: the customer's first address deleted (first taken out of its collection)."""
    customer, _ = _parents(session, m)
    address = customer.addresses[0]
    customer.addresses.remove(address)
    session.delete(address)
    session.commit()


def _example(script: str, *, movable: bool = True) -> Example:
    return Example(
        name=f"generic_associations/{script}",
        sources=(Source(f"generic_associations/{script}.py"),),
        phases=(
            Phase("demo", demo),
            Phase("edit", edit),
            Phase("move", move, after=("demo",))
            if movable
            else Phase("detach", detach, after=("demo",)),
            Phase("delete", delete, after=("demo",)),
        ),
    )


EXAMPLES = (
    _example("discriminator_on_association"),
    _example("generic_fk"),
    _example("table_per_association"),
    _example("table_per_related", movable=False),
)
