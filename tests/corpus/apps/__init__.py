"""Small service layers in the style of real applications, for the corpus.

Unlike SQLAlchemy's ``examples/``, these are not downloaded: each module is the kind of
code an application built on SQLAlchemy holds (its models and the service functions its
request handlers call), written the way the projects it imitates write it, without
importing their frameworks. :mod:`tests.corpus.adapters.services` drives them.
"""
