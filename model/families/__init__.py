"""Constraint families. Each module has ``add(m, data)`` that adds one named Block to ``m``.

The builder (:mod:`model.build`) walks :data:`model.build.FAMILIES` in order; a
family may use the components of the families before it. To add a constraint
family, write a module here with an ``add`` function and append it to that list.
"""
