"""alzaudit, the application: the ``alzaudit`` command line over the library packages.

Layers, importing one way, down: ``alzaudit`` (this package) > ``suites``, ``reports`` > ``audit`` > ``model``.
"""
