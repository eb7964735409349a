"""An external corpus: SQLAlchemy's own ``examples/`` recorded, replayed and compared.

Each example of the installed SQLAlchemy's source distribution is driven by an adapter
(:mod:`tests.corpus.adapters`): which files define its models and a few phase functions that
use them the way the example's own demo does. A *case* is one example, one phase and one
backend: the phases before it run directly on databases A and B, then the phase runs
directly on A with a plain ``Session`` and recorded with ``deferred_operations`` on B, the
journal is replayed into B by another process, and every table of A and B is compared
(:mod:`tests.corpus.runner`). ``tests/test_corpus.py`` asserts on each case;
``python -m tests.corpus.report`` prints them all as a table.

The examples are downloaded at run time and cached outside the checkout
(:mod:`tests.corpus.source`); none of their code is part of this repository.
"""
