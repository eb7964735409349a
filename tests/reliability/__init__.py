"""The reliability campaign: faults, tampering and load (docs/reliability.md).

Every module here is marked ``reliability`` so the campaign runs alone with
``python -m pytest -m reliability``; ``--soak`` multiplies every count for a longer run.
"""
