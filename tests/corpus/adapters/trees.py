"""Trees and graphs: ``adjacency_list``, ``nested_sets``, ``materialized_paths``, ``graphs``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from tests.corpus.spec import Example, Phase, Source

# -- examples/adjacency_list/adjacency_list.py: its __main__ block, one phase per commit ---


def build_tree(session: Session, m: Any) -> None:
    """The demo's first commit: rootnode with node1, node3 and node2 (subnode1, subnode2)."""
    node = m.TreeNode("rootnode")
    m.TreeNode("node1", parent=node)
    m.TreeNode("node3", parent=node)
    node2 = m.TreeNode("node2")
    m.TreeNode("subnode1", parent=node2)
    node.children["node2"] = node2
    m.TreeNode("subnode2", parent=node.children["node2"])
    session.add(node)
    session.commit()


def grow_and_prune(session: Session, m: Any) -> None:
    """The demo's second commit, on the stored tree: node4 and its subtree added, node1
    removed from its parent's dict (delete-orphan)."""
    node = session.scalars(select(m.TreeNode).filter(m.TreeNode.name == "rootnode")).one()
    node.dump()  # the demo prints the tree here, which loads every children dict
    session.add_all(
        [
            m.TreeNode("node4", parent=node),
            m.TreeNode("subnode3", parent=node.children["node4"]),
            m.TreeNode("subnode4", parent=node.children["node4"]),
            m.TreeNode("subsubnode1", parent=node.children["node4"].children["subnode3"]),
        ]
    )
    del node.children["node1"]
    session.commit()


def delete_tree(session: Session, m: Any) -> None:
    """The demo's last session: the root loaded with children four levels deep, deleted."""
    node = session.scalars(
        select(m.TreeNode)
        .options(selectinload(m.TreeNode.children, recursion_depth=4))
        .filter(m.TreeNode.name == "rootnode")
    ).one()
    node.dump()
    session.delete(node)
    session.commit()


ADJACENCY_LIST = Example(
    name="adjacency_list/adjacency_list",
    sources=(Source("adjacency_list/adjacency_list.py"),),
    phases=(
        Phase("build", build_tree),
        Phase("grow_and_prune", grow_and_prune),
        Phase("delete", delete_tree),
    ),
)

# -- examples/nested_sets/nested_sets.py: its script body --------------------------------


def hire(session: Session, m: Any) -> None:
    """The script: six employees added in INSERT order, each placed by ``before_insert``,
    which reads its parent's ``rgt`` and shifts the others with an UPDATE."""
    albert, bert, chuck, donna, eddie, fred = (
        m.Employee(emp=name) for name in ("Albert", "Bert", "Chuck", "Donna", "Eddie", "Fred")
    )
    bert.parent = albert
    chuck.parent = albert
    donna.parent = chuck
    eddie.parent = chuck
    fred.parent = chuck
    session.add_all([albert, bert, chuck, donna, eddie, fred])
    session.commit()
    session.query(m.Employee).all()


def hire_under_stored(session: Session, m: Any) -> None:
    """Ours: one more employee under a stored one, so the listener reads and shifts stored
    rows (the script says moving and removing nodes are not implemented)."""
    gina = m.Employee(emp="Gina")
    gina.parent = session.get(m.Employee, "Chuck")
    session.add(gina)
    session.commit()


NESTED_SETS = Example(
    name="nested_sets/nested_sets",
    sources=(Source("nested_sets/nested_sets.py"),),
    phases=(Phase("hire", hire), Phase("hire_under_stored", hire_under_stored)),
)

# -- examples/materialized_paths/materialized_paths.py: its __main__ block -----------------

PATHS = [
    "1",
    "1.2",
    "1.3",
    "1.3.4",
    "1.3.5",
    "1.3.6",
    "1.7",
    "1.7.8",
    "1.7.9",
    "1.7.9.10",
    "1.7.11",
]


def plant(session: Session, m: Any) -> None:
    """The demo's tree of eleven nodes with explicit ids (the demo flushes; we commit)."""
    session.add_all([m.Node(id=int(path.rpartition(".")[2]), path=path) for path in PATHS])
    session.flush()
    str(session.get(m.Node, 1))
    session.commit()


def move(session: Session, m: Any) -> None:
    """The demo's moves on the stored tree: 7 under 3, flush, then 3 under 2."""
    session.get(m.Node, 7).move_to(session.get(m.Node, 3))
    session.flush()
    str(session.get(m.Node, 1))
    session.get(m.Node, 3).move_to(session.get(m.Node, 2))
    session.commit()


MATERIALIZED_PATHS = Example(
    name="materialized_paths/materialized_paths",
    sources=(Source("materialized_paths/materialized_paths.py"),),
    phases=(Phase("plant", plant), Phase("move", move)),
)

# -- examples/graphs/directed_graph.py: its script body ------------------------------------


def draw(session: Session, m: Any) -> None:
    """The script: seven nodes and six edges, n1 -> n2 -> n1, n5, n7; n1 -> n3 -> n6."""
    n1, n2, n3, n4, n5, n6, n7 = (m.Node() for _ in range(7))
    for lower, higher in ((n1, n2), (n1, n3), (n2, n1), (n2, n5), (n2, n7), (n3, n6)):
        m.Edge(lower, higher)
    session.add_all([n1, n2, n3, n4, n5, n6, n7])
    session.commit()
    assert n3.higher_neighbors() == [n6]
    assert n2.higher_neighbors() == [n1, n5, n7]


def rewire(session: Session, m: Any) -> None:
    """Ours, on the stored graph: delete the first edge, point the last edge at the node
    without edges (a change of the edge's primary key) and add an edge from that node."""
    edges = session.scalars(select(m.Edge).order_by(m.Edge.lower_id, m.Edge.higher_id)).all()
    nodes = session.scalars(select(m.Node).order_by(m.Node.node_id)).all()
    (lonely,) = [n for n in nodes if not n.lower_edges and not n.higher_edges]
    session.delete(edges[0])
    edges[-1].higher_node = lonely
    session.add(m.Edge(lonely, nodes[0]))
    session.commit()


GRAPHS = Example(
    name="graphs/directed_graph",
    sources=(Source("graphs/directed_graph.py"),),
    phases=(Phase("draw", draw), Phase("rewire", rewire)),
)

EXAMPLES = (ADJACENCY_LIST, NESTED_SETS, MATERIALIZED_PATHS, GRAPHS)
