"""The ``surge`` command line."""
