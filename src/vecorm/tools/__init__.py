"""The tools layer: the ``vecorm`` command, the demo and its embedded server, ``doctor``,
``bench``, ``eval`` and the migrations scaffolding. Nothing below imports it.
"""
