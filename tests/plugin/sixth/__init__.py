"""A throw-away sixth method, to show that a method is one package, one yaml and one test folder.

It lives only in the tests: ``tests/plugin/conf/method/sixth.yaml`` selects it (added to Hydra's search path with
``hydra.searchpath``), and this package is importable through ``PYTHONPATH``. Nothing in ``launch``, ``common`` or
``conf/`` knows about it.
"""
