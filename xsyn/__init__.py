"""xsyn: Xsyn synthesis and APSAM annotation served by Triton Inference Server.

Subpackages map onto the repository's top-level folders:
``xsyn.export`` (``export/``), ``xsyn.client`` (``client/``), ``xsyn.ensembles`` (``ensembles/``).
"""

__version__ = "0.1.0"
