"""Design-space studies, run by ``python -m runners.sweep``.

``spec``     study files: axes (fields, scenario files, presets), ``where:`` filters, points and their keys
``store``    the SQLite result store (one row per finished point; resume; one writer)
``execute``  solving points: in-process, on an embedded Dask LocalCluster, or on a Dask cluster
``plots``    the line plot, heatmap and throughput-vs-block-time Pareto plot
"""
