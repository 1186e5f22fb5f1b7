"""The ``processor`` command line."""
