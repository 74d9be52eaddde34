"""The product's contracts, shared by client and server: no torch, no Triton server code.

Everything here imports with numpy, pydantic, Pillow and ``tritonclient`` alone, so the client
distribution (``pip install xsyn``, without the ``server`` extra) can use it:

- :mod:`xsyn.api.limits`: request limits (objects, image size, points);
- :mod:`xsyn.api.synthesis`, :mod:`xsyn.api.annotation`: typed requests and responses;
- :mod:`xsyn.api.class_groups`: class groups by area (data files);
- :mod:`xsyn.api.masks`: mask <-> box / COCO RLE helpers;
- :mod:`xsyn.api.tensors`: numpy <-> Triton gRPC tensors.

Layers point one way (a test walks the imports): ``xsyn.api`` / ``xsyn.errors`` <-
``xsyn.export`` / ``xsyn.runtimes`` <- ``xsyn.ensembles`` <- ``xsyn.serving`` <- ``xsyn.client``.
"""
