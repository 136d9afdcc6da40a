"""Bundles, the unit of deployment: writing one (``bundle``, ``onnx_export``, ``quantize``) and
reading one (``manifest``: format and checks; ``load``: an onnxruntime session or the torch model).

No facade here: readers import ``ctrlab.export.manifest`` and ``ctrlab.export.load``, which stay
free of torch, and importing this package must not pull in the writing side (torch, onnx).
"""
