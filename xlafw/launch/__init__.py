"""Launching on TPU pod slices: ``python -m xlafw.launch`` (see ``__main__``).

``slices`` is the table of TPU slice types (chips, hosts, topology, GKE node
labels); ``checks`` the launch's own checks beyond ``validate``; ``xpk`` runs
xpk (the manifest as a dry run, or the submission); ``manifest`` checks the
JobSet xpk wrote with the kubernetes client; ``launcher`` ties them together.
Nothing here imports torch_xla.
"""
